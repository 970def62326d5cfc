package caddyoidc

import (
	"reflect"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oidc", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("oidc", httpcaddyfile.After, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	o := new(OIDC)
	err := o.UnmarshalCaddyfile(h.Dispenser)
	if err == nil && o.Site == "" {
		o.Site = siteAddress(h)
	}
	return o, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oidc {
//		issuer           <url>
//		client_id        <id>
//		site             <address>
//		namespace        <name>
//		client_secret    <secret>
//		scopes           <scope...>
//		audience         <aud...>
//		routes           <path-prefix>
//		redirect_url     <url>
//		post_logout_redirect <url>
//		auth_param       <name> <value>
//		cookie_secret    <secret>
//		cookie_name      <name>
//		cookie_domain    <domain>
//		cookie_host_prefix on|off
//		cookie_secure    on|off
//		cookie_samesite  lax|strict|none
//		session          cookie|store
//		session_lifetime <duration>
//		refresh_before   <duration>
//		session_cache    <duration>
//		expose_tokens
//		allow_anonymous
//		pass_token       access|id|none
//		roles_claim      <claim> [<nested claim>...]
//		claim_header     <header> <claim.path>
//		require_role     <role> [<role>...]
//		require_claim    <claim.path> <value> [<value>...]
//		introspection    [<url>]
//		idp_timeout      <duration>
//		userinfo         on|off
//		strip_cookies    on|off
//		tokeninfo        <url>
//		introspection_cache <duration>
//		require_typ      <typ>
//		bearer_id_token_shaped refuse|accept
//		mint_from_bearer
//		verify_client_secret
//		backchannel_revoke_azat
//		bearer_only
//		name             <name>
//		label            <text>
//		provider <name> {
//			...          the provider options above: issuer, client_id,
//			             client_secret, scopes, audience, redirect_url,
//			             auth_param, roles_claim, claim_header,
//			             require_role, require_claim, introspection,
//			             userinfo, tokeninfo, introspection_cache,
//			             require_typ, bearer_id_token_shaped,
//			             mint_from_bearer, verify_client_secret,
//			             backchannel_revoke_azat, bearer_only, label
//		}
//		default_provider <name>
//		azat {
//			...          see azatauth.Config.UnmarshalCaddyfile
//		}
//	}
func (o *OIDC) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return o.unmarshalBlock(d, true)
}

// unmarshalBlock reads the options of the block at the dispenser: the
// handler's (top) or a provider block's.
func (o *OIDC) unmarshalBlock(d *caddyfile.Dispenser, top bool) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		if top && name == "provider" {
			if len(args) != 1 {
				return d.ArgErr()
			}
			p, err := unmarshalProvider(d, args[0])
			if err != nil {
				return err
			}
			o.Providers = append(o.Providers, p)
			continue
		}
		one := func(dst *string) error {
			if len(args) != 1 {
				return d.ArgErr()
			}
			*dst = args[0]
			return nil
		}
		dur := func(dst *caddy.Duration) error {
			if len(args) != 1 {
				return d.ArgErr()
			}
			v, err := caddy.ParseDuration(args[0])
			if err != nil {
				return d.Errf("%s: %v", name, err)
			}
			*dst = caddy.Duration(v)
			return nil
		}
		onOff := func() (*bool, error) {
			if len(args) != 1 {
				return nil, d.ArgErr()
			}
			v, err := parseOnOff(args[0])
			if err != nil {
				return nil, d.Errf("%s: %v", name, err)
			}
			return &v, nil
		}
		flag := func(dst *bool) error {
			switch len(args) {
			case 0:
				*dst = true
			case 1:
				v, err := parseOnOff(args[0])
				if err != nil {
					return d.Errf("%s: %v", name, err)
				}
				*dst = v
			default:
				return d.ArgErr()
			}
			return nil
		}
		var err error
		switch name {
		case "issuer":
			err = one(&o.Issuer)
		case "client_id":
			err = one(&o.ClientID)
		case "site":
			err = one(&o.Site)
		case "namespace":
			err = one(&o.Namespace)
		case "client_secret":
			err = one(&o.ClientSecret)
		case "scopes":
			if len(args) == 0 {
				return d.ArgErr()
			}
			o.Scopes = append(o.Scopes, args...)
		case "audience":
			if len(args) == 0 {
				return d.ArgErr()
			}
			o.Audience = append(o.Audience, args...)
		case "routes":
			err = one(&o.Routes)
		case "redirect_url":
			err = one(&o.RedirectURL)
		case "post_logout_redirect":
			err = one(&o.PostLogoutRedirectURL)
		case "auth_param":
			if len(args) != 2 {
				return d.ArgErr()
			}
			if o.AuthParams == nil {
				o.AuthParams = map[string]string{}
			}
			o.AuthParams[args[0]] = args[1]
		case "cookie_secret":
			err = one(&o.CookieSecret)
		case "cookie_name":
			err = one(&o.CookieName)
		case "cookie_domain":
			err = one(&o.CookieDomain)
		case "cookie_secure":
			o.CookieSecure, err = onOff()
		case "cookie_host_prefix":
			o.CookieHostPrefix, err = onOff()
		case "cookie_samesite":
			err = one(&o.CookieSameSite)
		case "session":
			err = one(&o.Session)
		case "session_lifetime":
			err = dur(&o.SessionLifetime)
		case "refresh_before":
			err = dur(&o.RefreshBefore)
		case "session_cache":
			err = dur(&o.SessionCache)
		case "expose_tokens":
			err = flag(&o.ExposeTokens)
		case "allow_anonymous":
			err = flag(&o.AllowAnonymous)
		case "pass_token":
			err = one(&o.PassToken)
		case "roles_claim":
			if len(args) == 0 {
				return d.ArgErr()
			}
			o.RolesClaim = args
		case "claim_header":
			if len(args) != 2 {
				return d.ArgErr()
			}
			if o.ClaimHeaders == nil {
				o.ClaimHeaders = map[string]string{}
			}
			o.ClaimHeaders[args[0]] = args[1]
		case "require_role":
			if len(args) == 0 {
				return d.ArgErr()
			}
			o.RequireRoles = append(o.RequireRoles, args)
		case "require_claim":
			if len(args) < 2 {
				return d.ArgErr()
			}
			o.RequireClaims = append(o.RequireClaims, ClaimRule{Path: args[0], Values: args[1:]})
		case "introspection":
			if len(args) > 1 {
				return d.ArgErr()
			}
			o.Introspection = true
			if len(args) == 1 {
				o.IntrospectionEndpoint = args[0]
			}
		case "idp_timeout":
			err = dur(&o.IdPTimeout)
		case "userinfo":
			o.UserinfoFetch, err = onOff()
		case "strip_cookies":
			o.StripCookies, err = onOff()
		case "backchannel_revoke_azat":
			err = flag(&o.BackchannelRevokeAZAT)
		case "verify_client_secret":
			err = flag(&o.VerifyClientSecret)
		case "tokeninfo":
			err = one(&o.TokeninfoEndpoint)
		case "introspection_cache":
			err = dur(&o.IntrospectionCache)
		case "require_typ":
			err = one(&o.RequireTyp)
		case "bearer_id_token_shaped":
			err = one(&o.BearerIDTokenShaped)
		case "mint_from_bearer":
			err = flag(&o.MintFromBearer)
		case "bearer_only":
			err = flag(&o.BearerOnly)
		case "name":
			err = one(&o.Name)
		case "label":
			if len(args) == 0 {
				return d.ArgErr()
			}
			o.Label = strings.Join(args, " ")
		case "default_provider":
			err = one(&o.DefaultProvider)
		case "azat":
			if len(args) != 0 {
				return d.ArgErr()
			}
			o.AZAT = new(azatauth.Config)
			err = o.AZAT.UnmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized oidc subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalProvider reads a `provider <name> { ... }` block: the options of
// one provider (issuer, client_id, audience, rules, ...), never the site's.
func unmarshalProvider(d *caddyfile.Dispenser, name string) (*Provider, error) {
	tmp := new(OIDC)
	if err := tmp.unmarshalBlock(d, false); err != nil {
		return nil, err
	}
	p := tmp.Provider
	tmp.Provider = Provider{}
	if !reflect.ValueOf(*tmp).IsZero() {
		return nil, d.Errf("provider %s: only provider options (issuer, client_id, client_secret, scopes, audience, roles_claim, claim_header, require_role, require_claim, introspection, ...) go in a provider block; site options (cookies, session, routes, azat, ...) go in the oidc block", name)
	}
	if p.Name != "" && p.Name != name {
		return nil, d.Errf("provider %s: a provider block is named by its argument", name)
	}
	p.Name = name
	return &p, nil
}

func parseOnOff(s string) (bool, error) {
	switch s {
	case "on", "yes":
		return true, nil
	case "off", "no":
		return false, nil
	}
	return strconv.ParseBool(s)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*OIDC)(nil)
