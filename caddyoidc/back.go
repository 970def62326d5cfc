package caddyoidc

import (
	"net/url"
	"strings"
)

// safeBack returns back when it is a same-origin absolute path, else "/".
// Rejected: empty values, scheme or host parts, protocol-relative "//host",
// "/\host" (browsers treat "\" as "/"), control characters and anything that
// does not parse as a plain path with an optional query.
func safeBack(back string) string {
	if !isSafeBack(back) {
		return "/"
	}
	return back
}

func isSafeBack(back string) bool {
	if back == "" || len(back) > 2048 || back[0] != '/' {
		return false
	}
	if len(back) > 1 && (back[1] == '/' || back[1] == '\\') {
		return false
	}
	for _, c := range back {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return false
		}
	}
	u, err := url.Parse(back)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return false
	}
	// A path that unescapes to "//" or "/\" would become protocol-relative
	// in some user agents or upstream frameworks.
	if p, err := url.PathUnescape(u.EscapedPath()); err != nil ||
		strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") {
		return false
	}
	return true
}
