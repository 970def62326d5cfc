package azatauth

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile reads the `azat` block (inside `oidc`), the dispenser
// positioned on the `azat` token. Syntax:
//
//	azat {
//		lifetime     <duration>
//		device_lifetime <duration>
//		device_clients <name>...
//		signer       local [<key.pem>] | kms <key-id-or-alias> [region <r>] [endpoint <url>]
//		jwks         <path>|off
//		issuer       <url>
//		audience     <aud>
//		grant_secret <secret>
//		fallback     access_token
//		logout       revoke|keep
//		trust        <jwks-url>
//		verify_only
//		grant_cache  <duration>
//	}
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		one := func(dst *string) error {
			if len(args) != 1 {
				return d.ArgErr()
			}
			*dst = args[0]
			return nil
		}
		var err error
		switch name {
		case "lifetime":
			if len(args) != 1 {
				return d.ArgErr()
			}
			v, perr := caddy.ParseDuration(args[0])
			if perr != nil {
				return d.Errf("lifetime: %v", perr)
			}
			c.Lifetime = caddy.Duration(v)
		case "device_lifetime":
			if len(args) != 1 {
				return d.ArgErr()
			}
			v, perr := caddy.ParseDuration(args[0])
			if perr != nil {
				return d.Errf("device_lifetime: %v", perr)
			}
			c.DeviceLifetime = caddy.Duration(v)
		case "device_clients":
			if len(args) == 0 {
				return d.ArgErr()
			}
			c.DeviceClients = append(c.DeviceClients, args...)
		case "signer":
			if len(args) == 0 {
				return d.ArgErr()
			}
			c.Signer = args[0]
			switch args[0] {
			case "local":
				switch len(args) {
				case 1:
				case 2:
					c.KeyFile = args[1]
				default:
					return d.ArgErr()
				}
			case "kms":
				if len(args) < 2 || len(args)%2 != 0 {
					return d.Errf("signer kms <key-id-or-alias> [region <region>] [endpoint <url>]")
				}
				c.KMSKeyID = args[1]
				for i := 2; i < len(args); i += 2 {
					switch args[i] {
					case "region":
						c.KMSRegion = args[i+1]
					case "endpoint":
						c.KMSEndpoint = args[i+1]
					default:
						return d.Errf("signer kms: unknown option %q", args[i])
					}
				}
			default:
				return d.Errf("signer must be local or kms, not %q", args[0])
			}
		case "jwks":
			err = one(&c.JWKSPath)
		case "issuer":
			err = one(&c.Issuer)
		case "audience":
			err = one(&c.Audience)
		case "grant_secret":
			err = one(&c.GrantSecret)
		case "fallback":
			err = one(&c.Fallback)
		case "logout":
			err = one(&c.Logout)
		case "trust":
			err = one(&c.Trust)
		case "grant_cache":
			if len(args) != 1 {
				return d.ArgErr()
			}
			v, perr := caddy.ParseDuration(args[0])
			if perr != nil {
				return d.Errf("grant_cache: %v", perr)
			}
			c.GrantCache = caddy.Duration(v)
		case "verify_only":
			if len(args) != 0 {
				return d.ArgErr()
			}
			c.VerifyOnly = true
		default:
			return d.Errf("unrecognized azat subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
