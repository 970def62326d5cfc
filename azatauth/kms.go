package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// KMSAPI is the part of the AWS KMS client the signer uses.
type KMSAPI interface {
	GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, opts ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	Sign(ctx context.Context, in *kms.SignInput, opts ...func(*kms.Options)) (*kms.SignOutput, error)
}

// KMSSigner signs with an asymmetric AWS KMS key. The public key is read
// once (GetPublicKey) and cached: verification never calls KMS. Needs the
// IAM permissions kms:GetPublicKey and kms:Sign on the key.
type KMSSigner struct {
	client KMSAPI
	keyID  string

	mu   sync.RWMutex
	pub  jwk.Key
	alg  jwa.SignatureAlgorithm
	algo types.SigningAlgorithmSpec
}

// NewKMSClient builds a KMS client from the standard AWS credential chain
// (environment, shared config, IMDS/ECS role), with an optional region and
// endpoint (e.g. a local KMS emulator).
func NewKMSClient(ctx context.Context, region, endpoint string) (*kms.Client, error) {
	var opts []func(*config.LoadOptions) error
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) {
		// Fail fast: a request that needs a signature waits for it.
		o.RetryMaxAttempts = 2
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	}), nil
}

// NewKMSSigner returns a signer for keyID (key id, ARN or alias/...). Call
// Load (and retry it) to fetch the public key.
func NewKMSSigner(client KMSAPI, keyID string) *KMSSigner {
	return &KMSSigner{client: client, keyID: keyID}
}

// Load fetches the public key and picks the JWS algorithm from the key spec:
// ECC_NIST_P256 → ES256, RSA_* → PS256 when offered... RS256 preferred.
func (s *KMSSigner) Load(ctx context.Context) (jwk.Key, error) {
	out, err := s.client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(s.keyID)})
	if err != nil {
		return nil, fmt.Errorf("kms GetPublicKey: %w", err)
	}
	if out.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, fmt.Errorf("kms key %s is not a SIGN_VERIFY key", s.keyID)
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms public key: %w", err)
	}
	alg, algo, err := kmsAlgorithm(pub, out.SigningAlgorithms)
	if err != nil {
		return nil, err
	}
	k, err := publicJWK(pub, alg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.pub, s.alg, s.algo = k, alg, algo
	s.mu.Unlock()
	return k, nil
}

// kmsAlgorithm maps a KMS key to its JWS algorithm: P-256 → ES256
// (ECDSA_SHA_256); RSA → RS256 (RSASSA_PKCS1_V1_5_SHA_256), or PS256
// (RSASSA_PSS_SHA_256) when the key offers only that.
func kmsAlgorithm(pub any, offered []types.SigningAlgorithmSpec) (jwa.SignatureAlgorithm, types.SigningAlgorithmSpec, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		if slices.Contains(offered, types.SigningAlgorithmSpecEcdsaSha256) {
			return jwa.ES256, types.SigningAlgorithmSpecEcdsaSha256, nil
		}
	case *rsa.PublicKey:
		if slices.Contains(offered, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256) {
			return jwa.RS256, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, nil
		}
		if slices.Contains(offered, types.SigningAlgorithmSpecRsassaPssSha256) {
			return jwa.PS256, types.SigningAlgorithmSpecRsassaPssSha256, nil
		}
	}
	return "", "", errors.New("kms key must be ECC_NIST_P256 or RSA with a SHA-256 signing algorithm")
}

// PublicKey returns the cached public key.
func (s *KMSSigner) PublicKey() (jwk.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.pub == nil {
		return nil, ErrKeyUnavailable
	}
	return s.pub, nil
}

// Sign asks KMS to sign the SHA-256 digest of signingInput (MessageType
// DIGEST) and converts ECDSA signatures from DER to raw r||s.
func (s *KMSSigner) Sign(ctx context.Context, signingInput []byte) ([]byte, error) {
	s.mu.RLock()
	alg, algo := s.alg, s.algo
	s.mu.RUnlock()
	if algo == "" {
		return nil, ErrKeyUnavailable
	}
	digest := sha256.Sum256(signingInput)
	out, err := s.client.Sign(ctx, &kms.SignInput{
		KeyId:            aws.String(s.keyID),
		Message:          digest[:],
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: algo,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: kms Sign: %v", ErrKeyUnavailable, err)
	}
	if alg == jwa.ES256 {
		return derToRawECDSA(out.Signature, 32)
	}
	return out.Signature, nil
}
