package caddyoidc

import (
	"net/http"
	"strconv"
	"strings"
)

const (
	// maxChunkSize keeps every cookie (name, value, attributes) under the
	// 4096-byte limit browsers enforce.
	maxChunkSize = 3800
	// maxChunks bounds how many chunks a session may use (and how many we
	// read back), so a client cannot make us assemble an unbounded value.
	maxChunks = 8
)

// cookieOpts are the attributes shared by this handler's cookies.
type cookieOpts struct {
	secure   bool
	sameSite http.SameSite
	domain   string
}

func (c cookieOpts) cookie(name, value, path string, maxAge int, httpOnly bool) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: path, Domain: c.domain, MaxAge: maxAge,
		Secure: c.secure, HttpOnly: httpOnly, SameSite: c.sameSite,
	}
}

// splitChunks cuts value into pieces of at most size bytes.
func splitChunks(value string, size int) []string {
	var out []string
	for len(value) > size {
		out = append(out, value[:size])
		value = value[size:]
	}
	return append(out, value)
}

// chunkName is the name of chunk i of the cookie base.
func chunkName(base string, i int) string { return base + "_" + strconv.Itoa(i) }

// cookiePairs calls f for every name=value pair of the request's Cookie
// headers, without the allocation and validation of http.Request.Cookies
// (this runs on every request). f returns false to stop.
func cookiePairs(r *http.Request, f func(name, value string) bool) {
	for _, line := range r.Header["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			name, value, ok := strings.Cut(part, "=")
			if !ok || name == "" {
				continue
			}
			if !f(name, strings.Trim(value, `"`)) {
				return
			}
		}
	}
}

// readChunked reassembles a chunked cookie. It returns "" when chunk 0 is
// missing, a chunk in between is missing, or there are more than maxChunks
// chunks.
func readChunked(r *http.Request, base string) string {
	var chunks [maxChunks]string
	n, size, tooMany := 0, 0, false
	prefix := base + "_"
	cookiePairs(r, func(name, value string) bool {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || len(rest) == 0 || len(rest) > 2 || rest[0] < '0' || rest[0] > '9' {
			return true
		}
		i, err := strconv.Atoi(rest)
		if err != nil {
			return true
		}
		if i >= maxChunks {
			tooMany = true
			return false
		}
		if chunks[i] == "" {
			n++
			size += len(value)
		}
		chunks[i] = value
		return true
	})
	if tooMany || n == 0 || chunks[0] == "" {
		return ""
	}
	if n == 1 {
		return chunks[0]
	}
	var b strings.Builder
	b.Grow(size)
	for i := 0; i < n; i++ {
		if chunks[i] == "" {
			return ""
		}
		b.WriteString(chunks[i])
	}
	return b.String()
}

// writeChunked sets value as chunks of base and expires chunks the request
// carried beyond the new count. An empty value deletes every chunk.
func writeChunked(w http.ResponseWriter, r *http.Request, opts cookieOpts, base, value string, maxAge int) bool {
	var chunks []string
	if value != "" {
		chunks = splitChunks(value, maxChunkSize)
		if len(chunks) > maxChunks {
			return false
		}
	}
	for i, v := range chunks {
		http.SetCookie(w, opts.cookie(chunkName(base, i), v, "/", maxAge, true))
	}
	// Expire every chunk-looking cookie the request carried that is not one
	// of the new chunks (a stray _8, a leading-zero _01, a chunk after a
	// gap): readChunked refuses values with such strays, so one left behind
	// would make every later read fail.
	prefix := base + "_"
	cookiePairs(r, func(name, _ string) bool {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || len(rest) == 0 || len(rest) > 2 || rest[0] < '0' || rest[0] > '9' {
			return true
		}
		if i, err := strconv.Atoi(rest); err == nil && (i >= len(chunks) || name != chunkName(base, i)) {
			http.SetCookie(w, opts.cookie(name, "", "/", -1, true))
		}
		return true
	})
	return true
}

// stripCookies removes the cookies whose names start with prefix from the
// request, so that upstreams never see this handler's sealed values.
func stripCookies(r *http.Request, prefix string) {
	lines := r.Header["Cookie"]
	found := false
	for _, l := range lines {
		if strings.Contains(l, prefix) {
			found = true
			break
		}
	}
	if !found {
		return
	}
	var keep []string
	cookiePairs(r, func(name, value string) bool {
		if !strings.HasPrefix(name, prefix) {
			keep = append(keep, name+"="+value)
		}
		return true
	})
	r.Header.Del("Cookie")
	if len(keep) > 0 {
		r.Header.Set("Cookie", strings.Join(keep, "; "))
	}
}
