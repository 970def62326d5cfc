package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// LocalKeyStorageKey is where the generated local signing key is kept in
// Caddy storage (PKCS#8 PEM). All instances sharing storage use it.
const LocalKeyStorageKey = "caddy-oidc/azat/signing_key.pem"

// LocalSigner signs with a private key held in memory: ES256 (P-256) when
// generated, or an RSA/P-256 key loaded from a PEM file.
type LocalSigner struct {
	priv any
	pub  jwk.Key
	alg  jwa.SignatureAlgorithm
}

// NewLocalSigner wraps an *ecdsa.PrivateKey (P-256, ES256) or an
// *rsa.PrivateKey (RS256).
func NewLocalSigner(priv any) (*LocalSigner, error) {
	var (
		pub any
		alg jwa.SignatureAlgorithm
	)
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		pub, alg = &k.PublicKey, jwa.ES256
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, errors.New("RSA signing keys must have at least 2048 bits")
		}
		pub, alg = &k.PublicKey, jwa.RS256
	default:
		return nil, fmt.Errorf("unsupported signing key type %T", priv)
	}
	pk, err := publicJWK(pub, alg)
	if err != nil {
		return nil, err
	}
	return &LocalSigner{priv: priv, pub: pk, alg: alg}, nil
}

// PublicKey returns the verification key.
func (s *LocalSigner) PublicKey() (jwk.Key, error) { return s.pub, nil }

// Sign signs signingInput; ECDSA signatures come out as raw r||s.
func (s *LocalSigner) Sign(_ context.Context, signingInput []byte) ([]byte, error) {
	signer, err := jws.NewSigner(s.alg)
	if err != nil {
		return nil, err
	}
	return signer.Sign(signingInput, s.priv)
}

// LoadOrCreateLocalKey returns the ES256 key kept in storage, generating it
// on first use (under a storage lock, so instances starting together agree).
func LoadOrCreateLocalKey(ctx context.Context, st certmagic.Storage) (any, error) {
	if b, err := st.Load(ctx, LocalKeyStorageKey); err == nil {
		return parsePrivatePEM(b)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := st.Lock(ctx, LocalKeyStorageKey); err != nil {
		return nil, err
	}
	defer st.Unlock(context.WithoutCancel(ctx), LocalKeyStorageKey) //nolint:errcheck
	if b, err := st.Load(ctx, LocalKeyStorageKey); err == nil {
		return parsePrivatePEM(b)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := st.Store(ctx, LocalKeyStorageKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, err
	}
	return k, nil
}

// LoadPEMFile reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key file.
func LoadPEMFile(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parsePrivatePEM(b)
}

func parsePrivatePEM(b []byte) (any, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block in signing key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("signing key is not a PKCS#8, EC or RSA private key")
}
