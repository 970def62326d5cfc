package azatauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/spf13/cobra"

	"github.com/caddy-oidc/caddy-oidc/internal/nsstore"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "azat-distrust",
		Usage: "--config <path> [--adapter <name>] <kid>",
		Short: "Makes every instance sharing the storage refuse AZATs signed by a key",
		Long: `
Records the key id (kid) as distrusted in the storage of the given
configuration (the same storage lookup as 'caddy storage export'). Every
instance sharing that storage refuses AZATs signed by that key within 10s,
tokens verified before included, and stops publishing the key in its JWKS; a
site verifying through 'trust <jwks url>' drops it within about 70s. A
distrust cannot be undone by an instance; to undo it, delete
caddy-oidc/ns/<namespace>/azat/distrusted/<kid> from the storage. The kid is
distrusted in every namespace (site, provider and client) that holds it.

Distrusting the current signing key also stops minting: replace the key
(for the generated key, delete caddy-oidc/ns/<namespace>/azat/signing_key.pem
from the storage) and reload Caddy.

List the keys and their state with 'caddy azat-keys --config <path>'.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file whose storage holds the keys (required)")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Args = cobra.ExactArgs(1)
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdAZATDistrust)
		},
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "azat-keys",
		Usage: "--config <path> [--adapter <name>]",
		Short: "Lists the AZAT signing keys in the storage and their state",
		Long: `
Lists every AZAT verification key in the storage of the given configuration:
kid, when it was added, when it was superseded by another key (tokens it
signed verify until then + lifetime + 1h), and whether it is distrusted.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file whose storage holds the keys (required)")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdAZATKeys)
		},
	})
}

func cmdAZATDistrust(fl caddycmd.Flags) (int, error) {
	st, done, err := storageOfConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer done()
	if err := distrustInNamespaces(context.Background(), os.Stdout, st, fl.Arg(0)); err != nil {
		return caddy.ExitCodeFailedQuit, err
	}
	return caddy.ExitCodeSuccess, nil
}

func cmdAZATKeys(fl caddycmd.Flags) (int, error) {
	st, done, err := storageOfConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer done()
	ctx := context.Background()
	ids, err := nsstore.IDs(ctx, st)
	if err != nil {
		return caddy.ExitCodeFailedQuit, err
	}
	for _, id := range ids {
		kr := NewStorageKeyring(nsstore.New(st, id))
		if err := kr.Reload(ctx); err != nil {
			return caddy.ExitCodeFailedQuit, err
		}
		if len(kr.Keys()) == 0 {
			continue
		}
		fmt.Fprintf(os.Stdout, "namespace %s\n", id)
		listKeys(os.Stdout, kr)
	}
	return caddy.ExitCodeSuccess, nil
}

// distrustInNamespaces distrusts kid in every namespace of st whose
// keyring holds it (a KMS key may serve several); it fails when none does.
func distrustInNamespaces(ctx context.Context, w io.Writer, st certmagic.Storage, kid string) error {
	if !validKid.MatchString(kid) {
		return fmt.Errorf("invalid kid %q", kid)
	}
	ids, err := nsstore.IDs(ctx, st)
	if err != nil {
		return err
	}
	found := 0
	for _, id := range ids {
		ns := nsstore.New(st, id)
		kr := NewStorageKeyring(ns)
		if err := kr.Reload(ctx); err != nil {
			return err
		}
		if !slices.ContainsFunc(kr.Keys(), func(k KeyInfo) bool { return k.Kid == kid }) {
			continue
		}
		fmt.Fprintf(w, "namespace %s: ", id)
		if err := distrust(ctx, w, ns, kid); err != nil {
			return err
		}
		found++
	}
	if found == 0 {
		return fmt.Errorf("no AZAT key %q in any namespace of this storage", kid)
	}
	return nil
}

// distrust distrusts kid in st (one namespace) and tells the operator what
// follows.
func distrust(ctx context.Context, w io.Writer, st certmagic.Storage, kid string) error {
	kr := NewStorageKeyring(st)
	if err := kr.Distrust(ctx, kid); err != nil {
		return err
	}
	fmt.Fprintf(w, "distrusted AZAT key %s\n", kid)
	fmt.Fprintf(w, "instances sharing this storage refuse its tokens within %v\n", keyringRefresh)
	for _, k := range kr.Keys() {
		if k.Kid == kid && k.Superseded.IsZero() {
			fmt.Fprintln(w, "this is the current signing key: minting fails until it is replaced "+
				"(generated key: delete caddy-oidc/ns/<namespace>/azat/signing_key.pem from the storage, then reload Caddy)")
		}
	}
	return nil
}

func listKeys(w io.Writer, kr *Keyring) {
	fmt.Fprintf(w, "%-44s  %-20s  %-20s  %s\n", "KID", "ADDED", "SUPERSEDED", "DISTRUSTED")
	for _, k := range kr.Keys() {
		sup := "current"
		if !k.Superseded.IsZero() {
			sup = k.Superseded.UTC().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%-44s  %-20s  %-20s  %v\n", k.Kid, k.Added.UTC().Format(time.DateTime), sup, k.Distrusted)
	}
}

// storageConfig is the top-level storage of a Caddy config.
type storageConfig struct {
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
}

// storageOfConfig loads the storage module of a config file, as Caddy's
// `storage export` does: the configured one, else Caddy's default.
func storageOfConfig(configFile, adapter string) (certmagic.Storage, func(), error) {
	if configFile == "" {
		return nil, nil, errors.New("--config is required (the configuration whose storage holds the keys)")
	}
	cfg, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return nil, nil, err
	}
	var sc storageConfig
	if len(cfg) > 0 {
		if err := json.Unmarshal(cfg, &sc); err != nil {
			return nil, nil, fmt.Errorf("reading the storage of %s: %v", configFile, err)
		}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if sc.StorageRaw == nil {
		return caddy.DefaultStorage, cancel, nil
	}
	val, err := ctx.LoadModule(&sc, "StorageRaw")
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("loading the storage module: %v", err)
	}
	st, err := val.(caddy.StorageConverter).CertMagicStorage()
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return st, cancel, nil
}
