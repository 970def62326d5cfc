package testop

import (
	"encoding/json"

	jose "github.com/go-jose/go-jose/v4"
)

// SignJWT signs claims with the OP's current signing key (its kid and alg),
// as the OP signs its own tokens: for tests that need tokens the OP would
// never issue (back-channel logout tokens, malformed variants). header adds
// or overrides protected header fields (e.g. "typ").
func (o *OP) SignJWT(claims map[string]any, header map[string]any) (string, error) {
	k := o.store.keys.signing()
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.id)
	for name, v := range header {
		opts = opts.WithHeader(jose.HeaderKey(name), v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv}, opts)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}
