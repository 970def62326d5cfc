package caddyoidc

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// identity is who the request is from, as far as upstreams are concerned.
type identity struct {
	Issuer            string         `json:"iss"`
	Subject           string         `json:"sub"`
	Email             string         `json:"email,omitempty"`
	Name              string         `json:"name,omitempty"`
	PreferredUsername string         `json:"preferred_username,omitempty"`
	Roles             []string       `json:"roles,omitempty"`
	Claims            map[string]any `json:"claims,omitempty"`
	// Source tells how the request authenticated: session, bearer,
	// introspection.
	Source string `json:"-"`
	// ClientID is the OAuth client a bearer token was issued to, if known.
	ClientID string `json:"-"`
	// GrantKey is the user's AZAT grant key, when known.
	GrantKey string `json:"-"`
	// computed caches vars().
	computed atomic.Pointer[identityVars]
}

// newIdentity builds an identity from verified claims. rolesPath locates the
// roles claim; extra, when its roles path holds values and claims' doesn't, is
// a second source for roles (the access token's claims).
func newIdentity(claims map[string]any, rolesPath []string, extra map[string]any) *identity {
	roles := claimStrings(lookupClaim(claims, rolesPath))
	if len(roles) == 0 && extra != nil {
		roles = claimStrings(lookupClaim(extra, rolesPath))
	}
	return identityFromClaims(claims, roles)
}

// identityFromClaims builds an identity from verified claims and the roles
// found for it.
func identityFromClaims(claims map[string]any, roles []string) *identity {
	id := &identity{
		Issuer:            claimString(claims, "iss"),
		Subject:           claimString(claims, "sub"),
		Email:             claimString(claims, "email"),
		Name:              claimString(claims, "name"),
		PreferredUsername: claimString(claims, "preferred_username"),
		Claims:            claims,
		Roles:             roles,
		ClientID:          claimClientID(claims),
	}
	return id
}

// claimClientID is the client a token was issued to: azp, else client_id.
func claimClientID(claims map[string]any) string {
	if azp := claimString(claims, "azp"); azp != "" {
		return azp
	}
	return claimString(claims, "client_id")
}

func claimString(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// lookupClaim follows path through nested objects. Each segment may itself
// contain dots: "a.b.c" matches key "a.b" then "c" when "a.b" exists, so
// URL-shaped claim names (https://hasura.io/jwt/claims) work unquoted.
func lookupClaim(m map[string]any, path []string) any {
	var cur any = m
	for _, seg := range path {
		var ok bool
		if cur, ok = lookupDotted(cur, seg); !ok {
			return nil
		}
	}
	return cur
}

func lookupDotted(cur any, seg string) (any, bool) {
	obj, ok := cur.(map[string]any)
	if !ok {
		return nil, false
	}
	if v, ok := obj[seg]; ok {
		return v, true
	}
	// Try the longest existing prefix before a dot, then recurse.
	for i := strings.LastIndexByte(seg, '.'); i > 0; i = strings.LastIndexByte(seg[:i], '.') {
		if v, ok := obj[seg[:i]]; ok {
			return lookupDotted(v, seg[i+1:])
		}
	}
	return nil, false
}

// claimStrings renders a claim value as strings: arrays element-wise, a
// string as itself (space- or comma-separated lists are split), other scalars
// in JSON form.
func claimStrings(v any) []string {
	switch t := v.(type) {
	case nil:
		return nil
	case string:
		f := strings.FieldsFunc(t, func(r rune) bool { return r == ',' || r == ' ' })
		return f
	case []any:
		out := make([]string, 0, len(t))
		for _, e := range t {
			out = append(out, claimScalar(e))
		}
		return out
	case map[string]any:
		// Zitadel-style role maps: {"role": {...}} -> role names.
		out := make([]string, 0, len(t))
		for k := range t {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	default:
		return []string{claimScalar(t)}
	}
}

func claimScalar(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case bool:
		return fmt.Sprint(t)
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64) // 3, 0.5, 1e-07 as 0.0000001
	case json.Number:
		return t.String()
	default:
		b, _ := json.Marshal(t)
		return string(b)
	}
}

// headerValue renders a claim for an HTTP header: arrays joined by commas,
// and control characters removed so a claim cannot split headers.
func headerValue(v any) string {
	var s string
	switch t := v.(type) {
	case []any:
		s = strings.Join(claimStrings(t), ",")
	case nil:
		return ""
	default:
		s = claimScalar(t)
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// clone copies the identity without its computed values.
func (id *identity) clone() *identity {
	return &identity{Issuer: id.Issuer, Subject: id.Subject, Email: id.Email, Name: id.Name,
		PreferredUsername: id.PreferredUsername, Roles: id.Roles, Claims: id.Claims,
		Source: id.Source, ClientID: id.ClientID, GrantKey: id.GrantKey}
}
