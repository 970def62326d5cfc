package caddyoidc

import (
	"slices"
	"strings"
)

// checkRules applies require_role and require_claim. It returns "" when the
// identity satisfies every rule, else the first unmet rule.
func (o *OIDC) checkRules(id *identity) string {
	for _, any := range o.RequireRoles {
		if !slices.ContainsFunc(any, func(r string) bool { return slices.Contains(id.Roles, r) }) {
			return "requires one of the roles " + strings.Join(any, ", ")
		}
	}
	for _, rule := range o.RequireClaims {
		if !claimMatches(lookupClaim(id.Claims, []string{rule.Path}), rule.Values) {
			return "requires claim " + rule.Path
		}
	}
	return ""
}

// claimMatches tells whether v (a scalar or an array) equals or contains one
// of values.
func claimMatches(v any, values []string) bool {
	if v == nil {
		return false
	}
	var have []string
	if arr, ok := v.([]any); ok {
		for _, e := range arr {
			have = append(have, claimScalar(e))
		}
	} else {
		have = []string{claimScalar(v)}
	}
	return slices.ContainsFunc(values, func(want string) bool { return slices.Contains(have, want) })
}
