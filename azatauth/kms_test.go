package azatauth

// Tests of the KMS signer against a real KMS emulator (nsmithuk/local-kms,
// built from testdata/localkms) through the real AWS SDK code path:
// credential chain, endpoint override, JSON protocol, GetPublicKey, Sign.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	kmsTestRegion  = "eu-central-1"
	kmsTestAccount = "111122223333"
	kmsTestOrigin  = "https://proxy.example"
	kmsTestGrant   = "op#alice"
)

// TestKMS runs every emulator test under one parent so that local-kms is
// built once per test binary run (into the parent's temporary directory).
// Run a part with e.g. -run 'KMS/stopped'.
func TestKMS(t *testing.T) {
	// Fake static credentials: the standard chain takes them from the
	// environment; nothing may come from the developer's AWS profile or IMDS.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAAZATTESTFAKE0000")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "azat-test-fake-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", kmsTestRegion)
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "no-credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	bin := buildLocalKMS(t)

	t.Run("sign", func(t *testing.T) { testKMSSign(t, bin) })
	t.Run("unsupported keys", func(t *testing.T) { testKMSUnsupportedKeys(t, bin) })
	t.Run("stopped after key cached", func(t *testing.T) { testKMSStoppedAfterLoad(t, bin) })
	t.Run("unreachable at start-up", func(t *testing.T) { testKMSUnreachableAtStartup(t, bin) })
}

// testKMSSign: keys created with the SDK load with the right algorithm, and
// tokens they sign verify with jwx directly and with Verify.
func testKMSSign(t *testing.T, bin string) {
	ctx := t.Context()
	lk := startLocalKMS(t, bin, t.TempDir(), freeKMSPort(t))
	client := lk.client(t)
	rsaID := createKMSKey(t, client, types.KeySpecRsa2048, types.KeyUsageTypeSignVerify)
	ecID := createKMSKey(t, client, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	createKMSAlias(t, client, "alias/azat-test", ecID)
	createKMSAlias(t, client, "alias/azat-test-rsa", rsaID)

	tests := []struct {
		name    string
		keyID   string
		onlyPSS bool // hide the PKCS#1 v1.5 algorithms from GetPublicKey
		alg     jwa.SignatureAlgorithm
		kmsAlg  types.SigningAlgorithmSpec
		sigLen  int
		tokens  int // ECDSA: many, to meet DER integers of every length
		sameAs  string
	}{
		{name: "RSA_2048", keyID: rsaID, alg: jwa.RS256, kmsAlg: types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, sigLen: 256, tokens: 3},
		{name: "ECC_NIST_P256", keyID: ecID, alg: jwa.ES256, kmsAlg: types.SigningAlgorithmSpecEcdsaSha256, sigLen: 64, tokens: 256},
		{name: "alias to ECC_NIST_P256", keyID: "alias/azat-test", alg: jwa.ES256, kmsAlg: types.SigningAlgorithmSpecEcdsaSha256, sigLen: 64, tokens: 16, sameAs: ecID},
		{name: "alias to RSA_2048", keyID: "alias/azat-test-rsa", alg: jwa.RS256, kmsAlg: types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, sigLen: 256, tokens: 2, sameAs: rsaID},
		{name: "ARN of ECC_NIST_P256", keyID: fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", kmsTestRegion, kmsTestAccount, ecID), alg: jwa.ES256, kmsAlg: types.SigningAlgorithmSpecEcdsaSha256, sigLen: 64, tokens: 2, sameAs: ecID},
		// local-kms (like AWS KMS) offers both RSASSA_PSS_* and
		// RSASSA_PKCS1_V1_5_* for every RSA SIGN_VERIFY key, so no key
		// offers only PSS: the PS256 branch is reached by filtering the
		// GetPublicKey answer. Signing still goes to the emulator.
		{name: "RSA_2048 offering only RSASSA_PSS", keyID: rsaID, onlyPSS: true, alg: jwa.PS256, kmsAlg: types.SigningAlgorithmSpecRsassaPssSha256, sigLen: 256, tokens: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spy := &kmsSpy{KMSAPI: client, onlyPSS: tt.onlyPSS}
			signer := NewKMSSigner(spy, tt.keyID)
			if _, err := signer.PublicKey(); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("PublicKey before Load: %v, want ErrKeyUnavailable", err)
			}
			if _, err := signer.Sign(ctx, []byte("x.y")); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("Sign before Load: %v, want ErrKeyUnavailable", err)
			}
			pub, err := signer.Load(ctx)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if pub.Algorithm() != tt.alg {
				t.Fatalf("alg = %v, want %v", pub.Algorithm(), tt.alg)
			}
			if pub.KeyID() == "" {
				t.Fatal("no kid")
			}
			if got, _ := signer.PublicKey(); got != pub {
				t.Fatal("PublicKey does not return the loaded key")
			}
			if tt.sameAs != "" {
				direct, err := NewKMSSigner(client, tt.sameAs).Load(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if direct.KeyID() != pub.KeyID() {
					t.Fatalf("kid through %s = %q, want the key's %q", tt.keyID, pub.KeyID(), direct.KeyID())
				}
			}

			derLens := map[int]int{}
			for i := range tt.tokens {
				now := time.Now()
				claims := &Claims{
					Issuer: kmsTestOrigin, Audience: audience{"https://api.example"}, Subject: kmsTestGrant,
					IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Add(time.Hour).Unix(),
					ID: strconv.Itoa(1000 + i),
				}
				tok, err := Mint(ctx, signer, claims)
				if err != nil {
					t.Fatalf("Mint: %v", err)
				}
				parts := strings.Split(tok, ".")
				if len(parts) != 3 {
					t.Fatalf("token has %d parts", len(parts))
				}
				sig, err := b64.DecodeString(parts[2])
				if err != nil {
					t.Fatal(err)
				}
				if len(sig) != tt.sigLen {
					t.Fatalf("signature is %d bytes, want %d", len(sig), tt.sigLen)
				}

				// The KMS request: a SHA-256 digest of the signing input.
				call := spy.last()
				digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
				if call.messageType != types.MessageTypeDigest || call.alg != tt.kmsAlg ||
					!bytes.Equal(call.message, digest[:]) || call.keyID != tt.keyID {
					t.Fatalf("KMS Sign called with %s %s key %s message %x, want DIGEST %s key %s %x",
						call.messageType, call.alg, call.keyID, call.message, tt.kmsAlg, tt.keyID, digest)
				}
				if tt.alg == jwa.ES256 {
					derLens[len(call.signature)]++
					checkDERMatchesRaw(t, call.signature, sig)
				} else if !bytes.Equal(call.signature, sig) {
					t.Fatal("RSA signature changed on the way from KMS")
				}

				// jwx, independently of our verifier.
				payload, err := jws.Verify([]byte(tok), jws.WithKey(pub.Algorithm(), pub))
				if err != nil {
					t.Fatalf("jws.Verify: %v", err)
				}
				var fromJWX Claims
				if err := json.Unmarshal(payload, &fromJWX); err != nil || !reflect.DeepEqual(&fromJWX, claims) {
					t.Fatalf("jwx payload = %s (%v), want %+v", payload, err, claims)
				}

				// Ours.
				lookup := func(kid string) jwk.Key {
					if kid == pub.KeyID() {
						return pub
					}
					return nil
				}
				want := Expectations{Issuer: kmsTestOrigin, Audience: "https://api.example", Now: now}
				got, err := Verify(tok, lookup, want)
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if !reflect.DeepEqual(got, claims) {
					t.Fatalf("Verify claims = %+v, want %+v", got, claims)
				}
				if i == 0 {
					// One flipped bit in the signature must not verify.
					sig[len(sig)/2] ^= 1
					bad := parts[0] + "." + parts[1] + "." + b64.EncodeToString(sig)
					if _, err := Verify(bad, lookup, want); !errors.Is(err, ErrSignature) {
						t.Fatalf("Verify of a corrupted signature: %v, want ErrSignature", err)
					}
				}
				if tt.alg == jwa.PS256 && i == 0 {
					logPSSSaltLength(t, pub, digest[:], call.signature)
				}
			}
			if len(derLens) > 0 {
				t.Logf("DER ECDSA signature lengths from KMS (bytes: count): %v", derLens)
			}
		})
	}
}

// testKMSUnsupportedKeys: keys that cannot sign AZATs fail Load, and the
// signer stays unavailable.
func testKMSUnsupportedKeys(t *testing.T, bin string) {
	ctx := t.Context()
	lk := startLocalKMS(t, bin, t.TempDir(), freeKMSPort(t))
	client := lk.client(t)
	tests := []struct {
		name  string
		keyID string
		err   string
	}{
		{"ECC_NIST_P384", createKMSKey(t, client, types.KeySpecEccNistP384, types.KeyUsageTypeSignVerify), "ECC_NIST_P256 or RSA"},
		{"ECC_SECG_P256K1", createKMSKey(t, client, types.KeySpecEccSecgP256k1, types.KeyUsageTypeSignVerify), ""},
		{"RSA_2048 ENCRYPT_DECRYPT", createKMSKey(t, client, types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt), "SIGN_VERIFY"},
		{"SYMMETRIC_DEFAULT", createKMSKey(t, client, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt), ""},
		{"unknown key", "0b9e3c47-0000-4000-8000-000000000000", "NotFound"},
		{"unknown alias", "alias/azat-missing", "NotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewKMSSigner(client, tt.keyID)
			_, err := s.Load(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Load: %v, want an error containing %q", err, tt.err)
			}
			t.Logf("Load: %v", err)
			if _, err := s.PublicKey(); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("PublicKey: %v, want ErrKeyUnavailable", err)
			}
			if _, err := s.Sign(ctx, []byte("x.y")); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("Sign: %v, want ErrKeyUnavailable", err)
			}
		})
	}
}

// testKMSStoppedAfterLoad: once the public key is cached, verification
// never needs KMS; minting fails with ErrKeyUnavailable (503) while KMS is
// down.
func testKMSStoppedAfterLoad(t *testing.T, bin string) {
	lk := startLocalKMS(t, bin, t.TempDir(), freeKMSPort(t))
	client := lk.client(t)
	keyID := createKMSKey(t, client, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	createKMSAlias(t, client, "alias/azat-test", keyID)

	st := &certmagic.FileStorage{Path: t.TempDir()}
	svc, _ := provisionKMSService(t, st, lk.endpoint(), "alias/azat-test")
	ctx := t.Context()
	if err := svc.Grants().Put(ctx, &Grant{Key: kmsTestGrant, RefreshToken: "rt", AccessToken: "at"}); err != nil {
		t.Fatal(err)
	}
	m, _ := waitKMSMint(t, svc, 10*time.Second)

	lk.stop()

	// Verification uses the cached key (and, on another instance, the key
	// published in storage): no KMS call.
	c, g, err := svc.Verify(ctx, m.Token, kmsTestOrigin)
	if err != nil {
		t.Fatalf("Verify with KMS down: %v", err)
	}
	if c.Subject != kmsTestGrant || g.Key != kmsTestGrant {
		t.Fatalf("Verify: sub %q grant %q", c.Subject, g.Key)
	}
	other, err := (&Config{VerifyOnly: true}).Provision(ctx, zap.NewNop(), st, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Verify(ctx, m.Token, kmsTestOrigin); err != nil {
		t.Fatalf("Verify on a verify-only instance with KMS down: %v", err)
	}

	mctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	_, err = svc.Mint(mctx, kmsTestGrant, kmsTestOrigin)
	if !errors.Is(err, ErrKeyUnavailable) {
		t.Fatalf("Mint with KMS down: %v, want ErrKeyUnavailable", err)
	}
	t.Logf("Mint with KMS down failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

// testKMSUnreachableAtStartup: start-up does not need KMS; minting answers
// ErrKeyUnavailable until the background retry loads the key, without a
// restart.
func testKMSUnreachableAtStartup(t *testing.T, bin string) {
	port := freeKMSPort(t)
	data := t.TempDir()
	// A previous run of the emulator creates the key in its data directory.
	first := startLocalKMS(t, bin, data, port)
	client := first.client(t)
	keyID := createKMSKey(t, client, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify)
	createKMSAlias(t, client, "alias/azat-test", keyID)
	first.stop()

	st := &certmagic.FileStorage{Path: t.TempDir()}
	svc, logs := provisionKMSService(t, st, first.endpoint(), "alias/azat-test")
	ctx := t.Context()
	if err := svc.Grants().Put(ctx, &Grant{Key: kmsTestGrant, RefreshToken: "rt", AccessToken: "at"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Mint(ctx, kmsTestGrant, kmsTestOrigin); !errors.Is(err, ErrKeyUnavailable) {
		t.Fatalf("Mint before the key is loaded: %v, want ErrKeyUnavailable", err)
	}
	// Wait for a failed load to be reported, so that the key is really
	// loaded by a retry.
	deadline := time.Now().Add(20 * time.Second)
	for logs.FilterMessage("AZAT KMS key not available; minting answers 503 until it is").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no failed KMS load logged; logs: %v", logs.All())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := svc.Mint(ctx, kmsTestGrant, kmsTestOrigin); !errors.Is(err, ErrKeyUnavailable) {
		t.Fatalf("Mint while KMS is down: %v, want ErrKeyUnavailable", err)
	}

	second := startLocalKMS(t, bin, data, port)
	m, took := waitKMSMint(t, svc, 10*time.Second)
	t.Logf("minting works %v after KMS came up (%d failed loads logged)", took.Round(time.Millisecond),
		logs.FilterMessage("AZAT KMS key not available; minting answers 503 until it is").Len())
	if logs.FilterMessage("AZAT KMS key loaded").Len() != 1 {
		t.Fatalf("key loaded logged %d times", logs.FilterMessage("AZAT KMS key loaded").Len())
	}
	if _, _, err := svc.Verify(ctx, m.Token, kmsTestOrigin); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	second.stop()
}

// provisionKMSService provisions a kms-signer Service the way Caddy does,
// logging into an observer.
func provisionKMSService(t *testing.T, st certmagic.Storage, endpoint, keyID string) (*Service, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	cctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel) // stops the background key loading
	c := &Config{Signer: "kms", KMSKeyID: keyID, KMSEndpoint: endpoint, KMSRegion: kmsTestRegion}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Provision(cctx, zap.New(core), st, http.DefaultClient)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("service log: %s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return svc, logs
}

// waitKMSMint mints until the background loading of the key is done.
func waitKMSMint(t *testing.T, svc *Service, within time.Duration) (*Minted, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		m, err := svc.Mint(t.Context(), kmsTestGrant, kmsTestOrigin)
		if err == nil {
			return m, time.Since(start)
		}
		if !errors.Is(err, ErrKeyUnavailable) {
			t.Fatalf("Mint: %v", err)
		}
		if time.Since(start) > within {
			t.Fatalf("Mint still fails after %v: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkDERMatchesRaw checks the JWS r||s against the DER signature KMS
// returned, parsed independently with encoding/asn1.
func checkDERMatchesRaw(t *testing.T, der, raw []byte) {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		t.Fatalf("KMS signature is not DER: %v", err)
	}
	if len(raw) != 64 || new(big.Int).SetBytes(raw[:32]).Cmp(rs.R) != 0 || new(big.Int).SetBytes(raw[32:]).Cmp(rs.S) != 0 {
		t.Fatalf("raw signature %x does not match DER %x", raw, der)
	}
}

// logPSSSaltLength reports whether a PSS signature uses the salt length
// RFC 7518 §3.5 requires (the hash size, as AWS KMS does).
func logPSSSaltLength(t *testing.T, pub jwk.Key, digest, sig []byte) {
	t.Helper()
	var rk rsa.PublicKey
	if err := pub.Raw(&rk); err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(&rk, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		// local-kms signs with rsa.SignPSS(..., nil): maximal salt. jwx
		// (and so Verify) auto-detects the salt length and accepts it.
		t.Logf("emulator PSS signature does not use a 32-byte salt (AWS KMS does): %v", err)
	} else {
		t.Log("emulator PSS signature uses a 32-byte salt")
	}
}

// kmsSpy records Sign calls and can hide the PKCS#1 v1.5 algorithms of a key.
type kmsSpy struct {
	KMSAPI
	onlyPSS bool

	mu    sync.Mutex
	calls []kmsSignCall
}

type kmsSignCall struct {
	keyID       string
	message     []byte
	messageType types.MessageType
	alg         types.SigningAlgorithmSpec
	signature   []byte
}

func (s *kmsSpy) GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, opts ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	out, err := s.KMSAPI.GetPublicKey(ctx, in, opts...)
	if err == nil && s.onlyPSS {
		out.SigningAlgorithms = slices.DeleteFunc(out.SigningAlgorithms, func(a types.SigningAlgorithmSpec) bool {
			return !strings.HasPrefix(string(a), "RSASSA_PSS_")
		})
	}
	return out, err
}

func (s *kmsSpy) Sign(ctx context.Context, in *kms.SignInput, opts ...func(*kms.Options)) (*kms.SignOutput, error) {
	out, err := s.KMSAPI.Sign(ctx, in, opts...)
	c := kmsSignCall{keyID: aws.ToString(in.KeyId), message: in.Message, messageType: in.MessageType, alg: in.SigningAlgorithm}
	if err == nil {
		c.signature = out.Signature
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	return out, err
}

func (s *kmsSpy) last() kmsSignCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) == 0 {
		return kmsSignCall{}
	}
	return s.calls[len(s.calls)-1]
}

func createKMSKey(t *testing.T, c *kms.Client, spec types.KeySpec, usage types.KeyUsageType) string {
	t.Helper()
	out, err := c.CreateKey(t.Context(), &kms.CreateKeyInput{
		KeySpec: spec, KeyUsage: usage, Description: aws.String("azat test " + string(spec)),
	})
	if err != nil {
		t.Fatalf("CreateKey %s: %v", spec, err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}

func createKMSAlias(t *testing.T, c *kms.Client, alias, keyID string) {
	t.Helper()
	if _, err := c.CreateAlias(t.Context(), &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("CreateAlias %s: %v", alias, err)
	}
}

// buildLocalKMS builds the emulator from the testdata/localkms module. A
// failed build fails the test: the KMS path must not go untested silently.
func buildLocalKMS(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("testdata", "localkms"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "local-kms")
	start := time.Now()
	cmd := exec.Command("go", "-C", dir, "build", "-o", bin, "github.com/nsmithuk/local-kms")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building local-kms: %v\n%s", err, out)
	}
	t.Logf("built local-kms in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// freeKMSPort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freeKMSPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// localKMS is a running emulator.
type localKMS struct {
	port int
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	once sync.Once
}

// startLocalKMS starts the emulator on port with its database in data, and
// waits until it answers. It is killed at cleanup.
func startLocalKMS(t *testing.T, bin, data string, port int) *localKMS {
	t.Helper()
	lk := &localKMS{port: port, out: &syncBuffer{}, done: make(chan struct{})}
	lk.cmd = exec.Command(bin)
	lk.cmd.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(port),
		"KMS_DATA_PATH="+data,
		"KMS_SEED_PATH="+filepath.Join(data, "no-seed.yaml"),
		"KMS_REGION="+kmsTestRegion,
		"KMS_ACCOUNT_ID="+kmsTestAccount,
	)
	lk.cmd.Stdout, lk.cmd.Stderr = lk.out, lk.out
	if err := lk.cmd.Start(); err != nil {
		t.Fatalf("starting local-kms: %v", err)
	}
	go func() {
		_ = lk.cmd.Wait()
		close(lk.done)
	}()
	t.Cleanup(func() {
		lk.stop()
		if t.Failed() {
			t.Logf("local-kms on port %d:\n%s", port, lk.out.String())
		}
	})

	// Ready when it answers an API call (any answer).
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-lk.done:
			t.Fatalf("local-kms exited: %v\n%s", lk.cmd.ProcessState, lk.out.String())
		default:
		}
		req, _ := http.NewRequest(http.MethodPost, lk.endpoint(), strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		req.Header.Set("X-Amz-Target", "TrentService.ListKeys")
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			return lk
		}
		if time.Now().After(deadline) {
			t.Fatalf("local-kms did not answer on port %d:\n%s", port, lk.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (lk *localKMS) endpoint() string { return "http://127.0.0.1:" + strconv.Itoa(lk.port) }

// stop kills the emulator and waits for it to exit.
func (lk *localKMS) stop() {
	lk.once.Do(func() {
		_ = lk.cmd.Process.Kill()
		<-lk.done
	})
}

// client is an SDK client for the emulator, built like the signer's.
func (lk *localKMS) client(t *testing.T) *kms.Client {
	t.Helper()
	c, err := NewKMSClient(t.Context(), kmsTestRegion, lk.endpoint())
	if err != nil {
		t.Fatalf("NewKMSClient: %v", err)
	}
	return c
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
