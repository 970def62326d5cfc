package azatauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// Signer signs AZATs. Implementations: a local ES256 key kept in Caddy
// storage, and an AWS KMS asymmetric key.
type Signer interface {
	// PublicKey returns the verification key, with kid (RFC 7638
	// thumbprint) and alg set. It fails with ErrKeyUnavailable while the key
	// is not loaded yet.
	PublicKey() (jwk.Key, error)
	// Sign returns the JWS signature (raw, as RFC 7518 wants it: r||s for
	// ECDSA) of signingInput with the key's algorithm.
	Sign(ctx context.Context, signingInput []byte) ([]byte, error)
}

// ErrKeyUnavailable means the signing key is not loaded (yet): minting
// answers 503 until it is.
var ErrKeyUnavailable = errors.New("azat signing key unavailable")

// publicJWK turns a public key into a JWK with alg and kid (its RFC 7638
// SHA-256 thumbprint) set.
func publicJWK(pub crypto.PublicKey, alg jwa.SignatureAlgorithm) (jwk.Key, error) {
	k, err := jwk.FromRaw(pub)
	if err != nil {
		return nil, err
	}
	if _, ok := pub.(*rsa.PublicKey); ok && alg != jwa.RS256 && alg != jwa.PS256 {
		return nil, fmt.Errorf("RSA key cannot sign %s", alg)
	}
	if ec, ok := pub.(*ecdsa.PublicKey); ok && (ec.Curve != elliptic.P256() || alg != jwa.ES256) {
		return nil, fmt.Errorf("only P-256 ECDSA keys (ES256) are supported")
	}
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	_ = k.Set(jwk.KeyIDKey, base64.RawURLEncoding.EncodeToString(tp))
	_ = k.Set(jwk.AlgorithmKey, alg)
	_ = k.Set(jwk.KeyUsageKey, jwk.ForSignature)
	return k, nil
}

// derToRawECDSA converts an ASN.1 DER ECDSA signature (what AWS KMS and
// crypto/ecdsa.SignASN1 return) into the fixed-size r||s form JWS requires
// (RFC 7518 §3.4): 64 bytes for P-256. Mixing the two up makes every token
// unverifiable, so this is strict.
func derToRawECDSA(der []byte, size int) ([]byte, error) {
	// SEQUENCE { INTEGER r, INTEGER s }
	if len(der) < 8 || der[0] != 0x30 {
		return nil, errors.New("ecdsa signature: not a DER sequence")
	}
	body, rest, err := derTLV(der, 0x30)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("ecdsa signature: bad sequence")
	}
	r, body, err := derTLV(body, 0x02)
	if err != nil {
		return nil, errors.New("ecdsa signature: bad r")
	}
	s, body, err := derTLV(body, 0x02)
	if err != nil || len(body) != 0 {
		return nil, errors.New("ecdsa signature: bad s")
	}
	out := make([]byte, 2*size)
	if err := putInt(out[:size], r); err != nil {
		return nil, err
	}
	if err := putInt(out[size:], s); err != nil {
		return nil, err
	}
	return out, nil
}

// derTLV reads one DER element with the given tag (short or one/two-byte
// long length forms) and returns its content and what follows it.
func derTLV(b []byte, tag byte) (content, rest []byte, err error) {
	if len(b) < 2 || b[0] != tag {
		return nil, nil, errors.New("unexpected tag")
	}
	n, off := int(b[1]), 2
	switch {
	case n < 0x80:
	case n == 0x81 && len(b) >= 3 && b[2] >= 0x80: // DER: the shortest form
		n, off = int(b[2]), 3
	case n == 0x82 && len(b) >= 4 && b[2] != 0:
		n, off = int(b[2])<<8|int(b[3]), 4
	default:
		return nil, nil, errors.New("bad length")
	}
	if len(b) < off+n {
		return nil, nil, errors.New("truncated")
	}
	return b[off : off+n], b[off+n:], nil
}

// putInt writes the DER INTEGER content v, which must be positive and
// minimally encoded (a leading zero only before a byte with its top bit
// set), right-aligned into dst.
func putInt(dst, v []byte) error {
	switch {
	case len(v) == 0 || v[0]&0x80 != 0:
		return errors.New("ecdsa signature: integer empty or negative")
	case v[0] == 0 && (len(v) == 1 || v[1]&0x80 == 0):
		return errors.New("ecdsa signature: integer zero or not minimally encoded")
	case v[0] == 0:
		v = v[1:]
	}
	if len(v) > len(dst) {
		return errors.New("ecdsa signature: integer too large")
	}
	copy(dst[len(dst)-len(v):], v)
	return nil
}
