package azatauth

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		c      Config
		errSub string
	}{
		{"defaults", Config{}, ""},
		{"kms", Config{Signer: "kms", KMSKeyID: "alias/x", KMSEndpoint: "http://127.0.0.1:1"}, ""},
		{"kms without key", Config{Signer: "kms"}, "key id"},
		{"kms with key file", Config{Signer: "kms", KMSKeyID: "k", KeyFile: "/k.pem"}, "key_file"},
		{"local with kms key", Config{Signer: "local", KMSKeyID: "k"}, "kms key"},
		{"unknown signer", Config{Signer: "vault"}, "signer"},
		{"negative lifetime", Config{Lifetime: -1}, "lifetime"},
		{"bad fallback", Config{Fallback: "id_token"}, "fallback"},
		{"relative jwks path", Config{JWKSPath: "jwks.json"}, "jwks"},
		{"relative trust", Config{Trust: "other.example/jwks"}, "trust"},
		{"placeholder issuer", Config{Issuer: "{env.ISS}"}, ""},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if tt.errSub == "" && err != nil || tt.errSub != "" && (err == nil || !strings.Contains(err.Error(), tt.errSub)) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.errSub)
		}
	}
}
