package azatauth

// Fuzz targets for the AZAT code that reads untrusted or external bytes. See
// TESTING.md. FuzzVerify lives in token_test.go. Seed corpora live in
// testdata/fuzz/<Name>/.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

type ecdsaSig struct{ R, S *big.Int }

// FuzzDERToRaw checks the DER to JWS (r||s) conversion of KMS signatures:
// no panic; a success is 64 bytes that re-encode (encoding/asn1) to DER
// converting back to the same bytes; and every strict DER signature with
// integers in 1..2^256-1 converts to exactly its integers (a valid KMS
// signature is never refused or misread).
func FuzzDERToRaw(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := make([]byte, 32)
	sig, _ := ecdsa.SignASN1(rand.Reader, k, d)
	f.Add(sig)
	f.Fuzz(func(t *testing.T, der []byte) {
		raw, err := derToRawECDSA(der, 32)
		if err == nil {
			if len(raw) != 64 {
				t.Fatalf("raw signature of %d bytes", len(raw))
			}
			r, s := new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])
			re, err := asn1.Marshal(ecdsaSig{r, s})
			if err != nil {
				t.Fatal(err)
			}
			raw2, err := derToRawECDSA(re, 32)
			if err != nil || !bytes.Equal(raw, raw2) {
				t.Fatalf("re-encoded %x converts to %x, %v; first %x", re, raw2, err, raw)
			}
			// Soundness: only canonical DER is accepted (nothing
			// non-minimal, negative, zero or with a long-form length that
			// could be shorter).
			if !bytes.Equal(re, der) {
				t.Fatalf("non-canonical DER %x accepted (canonical %x)", der, re)
			}
		}

		// Completeness: DER that is exactly what encoding/asn1 produces for
		// its r and s (encoding/asn1 alone is not enough of an oracle: it
		// ignores trailing elements inside a SEQUENCE).
		var want ecdsaSig
		rest, aerr := asn1.Unmarshal(der, &want)
		if aerr != nil || len(rest) != 0 || want.R.Sign() <= 0 || want.S.Sign() <= 0 ||
			want.R.BitLen() > 256 || want.S.BitLen() > 256 {
			return
		}
		if canon, _ := asn1.Marshal(want); !bytes.Equal(canon, der) {
			return
		}
		if err != nil {
			t.Fatalf("valid DER signature %x refused: %v", der, err)
		}
		if new(big.Int).SetBytes(raw[:32]).Cmp(want.R) != 0 || new(big.Int).SetBytes(raw[32:]).Cmp(want.S) != 0 {
			t.Fatalf("DER %x (r=%x s=%x) converted to %x", der, want.R, want.S, raw)
		}
	})
}

// FuzzPeekIssuer checks the unverified issuer peek that routes bearer tokens:
// no panic; a non-empty result only for a dotted token within MaxTokenSize;
// the header and signature segments never change it; and for a really
// minted AZAT it returns exactly the issuer Verify then accepts, so an AZAT
// is always routed to the AZAT verifier.
func FuzzPeekIssuer(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer := mustLocal(f, ec)
	pub, _ := signer.PublicKey()
	keys := func(kid string) jwk.Key {
		if kid == pub.KeyID() {
			return pub
		}
		return nil
	}
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL3Byb3h5In0.", "https://proxy")
	f.Fuzz(func(t *testing.T, token, iss string) {
		got := PeekIssuer(token)
		if got != "" {
			if len(token) > MaxTokenSize || strings.Count(token, ".") < 2 {
				t.Fatalf("issuer %q peeked from a non-JWT of %d bytes", got, len(token))
			}
			dot1 := strings.IndexByte(token, '.')
			dot2 := dot1 + 1 + strings.IndexByte(token[dot1+1:], '.')
			if g := PeekIssuer("x" + token[dot1:dot2] + ".sig"); g != got && len(token) <= MaxTokenSize-4 {
				t.Fatalf("header/signature change the issuer: %q vs %q", g, got)
			}
		}

		// A minted AZAT with issuer iss.
		now := time.Now()
		tok, err := Mint(context.Background(), signer, &Claims{Issuer: iss, Audience: audience{"aud"},
			Subject: "https://op#alice", IssuedAt: now.Unix(), Expiry: now.Add(time.Hour).Unix(), ID: "1"})
		if err != nil {
			t.Fatal(err)
		}
		peeked := PeekIssuer(tok)
		if len(tok) > MaxTokenSize {
			if peeked != "" {
				t.Fatalf("peeked %q from an oversized token", peeked)
			}
			return
		}
		var norm string // iss as JSON carries it (invalid UTF-8 replaced)
		b, _ := json.Marshal(iss)
		_ = json.Unmarshal(b, &norm)
		if peeked != norm {
			t.Fatalf("PeekIssuer = %q, minted with %q", peeked, norm)
		}
		c, err := Verify(tok, keys, Expectations{Issuer: peeked, Audience: "aud", Now: now})
		if err != nil || c.Issuer != peeked {
			t.Fatalf("minted token does not verify with its peeked issuer %q: %v", peeked, err)
		}
	})
}

// FuzzUnmarshalAZATCaddyfile parses arbitrary text inside `azat { ... }`:
// no panic; what parses names a known signer, marshals to JSON and comes
// back the same, and Validate refuses a mixed-up signer.
func FuzzUnmarshalAZATCaddyfile(f *testing.F) {
	f.Add("signer kms alias/azat region eu-west-1\nlifetime 720h")
	f.Fuzz(func(t *testing.T, body string) {
		// caddyfile.NewTestDispenser log.Fatal()s on lexer errors.
		tokens, err := caddyfile.Tokenize([]byte("azat {\n"+body+"\n}"), "Testfile")
		if err != nil {
			return
		}
		d := caddyfile.NewDispenser(tokens)
		d.Next()
		c := new(Config)
		if c.UnmarshalCaddyfile(d) != nil {
			return
		}
		switch c.Signer {
		case "", "local", "kms":
		default:
			t.Fatalf("signer %q parsed", c.Signer)
		}
		// Options of the other signer may parse (a later `signer` line
		// does not clear them) but must not validate.
		if c.Validate() == nil {
			if c.Signer == "kms" && (c.KMSKeyID == "" || c.KeyFile != "") ||
				c.Signer != "kms" && c.KMSKeyID != "" {
				t.Fatalf("inconsistent signer config validates: %+v", c)
			}
		}
		b1, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var c2 Config
		if err := json.Unmarshal(b1, &c2); err != nil {
			t.Fatalf("%s: %v", b1, err)
		}
		if b2, _ := json.Marshal(&c2); !bytes.Equal(b1, b2) {
			t.Fatalf("JSON not stable:\n%s\n%s", b1, b2)
		}
	})
}
