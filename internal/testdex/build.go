package testdex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The dex release this package runs, and the module version it is built from
// (dex's v2.x tags are not Go module versions; v2.45.1 is commit 11d2eeb52b42).
// dexbin/go.mod pins DexModuleVersion; change both together.
const (
	DexVersion       = "v2.45.1"
	DexModuleVersion = "v0.0.0-20260303133905-11d2eeb52b42"
	dexPackage       = "github.com/dexidp/dex/cmd/dex"
)

// EnvDexBinary names an environment variable that, when set, is the path of a
// dex binary to run instead of building one (e.g. a machine without the Go
// module proxy, with dex installed otherwise).
const EnvDexBinary = "CADDY_OIDC_DEX_BIN"

// EnvDexCache names an environment variable that, when set, is the directory
// for cached dex builds instead of os.UserCacheDir()/caddy-oidc-testdex.
const EnvDexCache = "CADDY_OIDC_DEX_CACHE"

// buildTimeout bounds one `go build` of dex (3-5 minutes on a loaded 2-core
// machine, 5 from empty module and build caches).
const buildTimeout = 20 * time.Minute

var (
	binMu   sync.Mutex
	binPath string
)

// Binary returns the path of the dex binary, building it on first use.
//
// The binary is built by `go build github.com/dexidp/dex/cmd/dex` in the
// nested module dexbin (next to this file, so its go.mod and go.sum pin every
// dependency and the main module's go.mod stays free of dex's). It is cached
// under os.UserCacheDir()/caddy-oidc-testdex/<key>/dex (or
// $CADDY_OIDC_DEX_CACHE/<key>/dex), where key covers the
// dex module version, a hash of dexbin's go.mod and go.sum, GOOS and GOARCH:
// only the first run on a machine pays the build. Test binaries building at
// the same time (go test ./... runs packages in parallel) serialize on a lock
// file (flock on Unix) and the binary is renamed into place complete, so
// nobody runs a half-written file.
//
// With $CADDY_OIDC_DEX_BIN set, that binary is used and nothing is built.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := binary(t.Logf)
	if err != nil {
		t.Fatalf("testdex: %v", err)
	}
	return p
}

func binary(logf func(string, ...any)) (string, error) {
	if p := os.Getenv(EnvDexBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvDexBinary, err)
		}
		return p, nil
	}

	binMu.Lock()
	defer binMu.Unlock()
	if binPath != "" {
		return binPath, nil
	}

	modDir, err := dexbinDir()
	if err != nil {
		return "", err
	}
	key, err := cacheKey(modDir)
	if err != nil {
		return "", err
	}
	root := os.Getenv(EnvDexCache)
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil || base == "" {
			base = os.TempDir()
		}
		root = filepath.Join(base, "caddy-oidc-testdex")
	}
	dir := filepath.Join(root, key)
	exe := filepath.Join(dir, "dex")
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	if isFile(exe) {
		binPath = exe
		return exe, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}

	unlock, err := lockFile(filepath.Join(dir, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if isFile(exe) { // built by another process while we waited for the lock
		binPath = exe
		return exe, nil
	}

	logf("testdex: building dex %s (%s@%s) into %s; once per machine, 1-5 minutes",
		DexVersion, dexPackage, DexModuleVersion, exe)
	start := time.Now()
	tmp, err := os.CreateTemp(dir, "dex-*.tmp")
	if err != nil {
		return "", err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // after a successful rename this fails harmlessly

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath",
		"-ldflags", "-X main.version="+DexVersion,
		"-o", tmpName, dexPackage)
	cmd.Dir = modDir
	// CGO off: no C compiler needed (dex's sqlite storage, unused here, is
	// left out); GOWORK off: a go.work around the checkout must not pull
	// this module into a workspace; -mod=readonly (added to GOFLAGS): go.sum
	// is complete, never let a build edit dexbin/go.mod.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off",
		"GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=readonly"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building dex in %s: %v\n%s", modDir, err, out.Bytes())
	}
	if err := os.Chmod(tmpName, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmpName, exe); err != nil {
		return "", err
	}
	logf("testdex: built dex in %s", time.Since(start).Round(time.Second))
	binPath = exe
	return exe, nil
}

// dexbinDir is the nested module's directory, found from this source file's
// path (tests run from the source tree).
func dexbinDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the testdex sources (runtime.Caller)")
	}
	dir := filepath.Join(filepath.Dir(file), "dexbin")
	if !isFile(filepath.Join(dir, "go.mod")) {
		return "", fmt.Errorf("%s/go.mod not found (built with -trimpath?); set $%s to a dex binary", dir, EnvDexBinary)
	}
	return dir, nil
}

func cacheKey(modDir string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%s-%s-%s-%s", DexVersion, hex.EncodeToString(h.Sum(nil))[:12], runtime.GOOS, runtime.GOARCH), nil
}

// goTool is the go command of the toolchain running the tests (go test puts
// $GOROOT/bin first in PATH; GOROOT is a fallback).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if isFile(p) {
		return p
	}
	return "go"
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
