package caddyoidc

import (
	"math/bits"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

const (
	// maxChunkSize keeps every cookie (name, value, attributes) under the
	// 4096-byte limit browsers enforce.
	maxChunkSize = 3800
	// maxChunks bounds how many chunks a session may use (and how many we
	// read back), so a client cannot make us assemble an unbounded value.
	// Chunk indices are single digits (see cookieOpts.classify).
	maxChunks = 8

	// hostPrefix is the RFC 6265bis name prefix that browsers accept only on
	// a cookie that is Secure, host-only (no Domain) and Path=/: a sibling
	// subdomain or a plain-HTTP page can then neither set nor shadow the
	// cookie (cookie tossing).
	hostPrefix = "__Host-"

	// Cookie name suffixes after the base name.
	flowSuffix        = "_flow_"
	accessTokenSuffix = "_access_token"
	idTokenSuffix     = "_id_token"
	// flowIDLen is the length of the state prefix in a flow cookie's name.
	flowIDLen = 16
)

// Chunk indices must stay single digits.
const _ = uint(10 - maxChunks)

// cookieOpts are the attributes and the name of this handler's cookies for
// one request.
type cookieOpts struct {
	secure   bool
	sameSite http.SameSite
	domain   string
	// base is cookie_name; prefix is hostPrefix when the cookies are Secure
	// and host-only, else "". Every cookie of the handler is named
	// prefix + base + suffix.
	base, prefix string
}

// name is the full name of the handler's cookie with suffix.
func (c cookieOpts) name(suffix string) string { return c.prefix + c.base + suffix }

// path is p, or "/" for __Host- cookies (which browsers accept only with
// Path=/).
func (c cookieOpts) path(p string) string {
	if c.prefix != "" {
		return "/"
	}
	return p
}

func (c cookieOpts) cookie(name, value, path string, maxAge int, httpOnly bool) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: path, Domain: c.domain, MaxAge: maxAge,
		Secure: c.secure, HttpOnly: httpOnly, SameSite: c.sameSite,
	}
}

// cookieKind is what a cookie name is to this handler.
type cookieKind uint8

const (
	notOwn      cookieKind = iota
	chunkCookie            // <base>_<i>, 0 <= i < maxChunks, one digit
	badChunk               // <base>_<digits> spelled otherwise: _8, _01, _12
	flowCookie             // <base>_flow_<16 characters of the state>
	tokenCookie            // <base>_access_token, <base>_id_token
)

// classify tells what a cookie name is: one of this handler's cookies (in
// either spelling, with or without the __Host- prefix) or not, the chunk
// index of a chunk, and whether the name has the spelling in use now
// (active). It allocates nothing: it runs on every request.
func (c cookieOpts) classify(name string) (kind cookieKind, index int, active bool) {
	rest, host := strings.CutPrefix(name, hostPrefix)
	rest, ok := strings.CutPrefix(rest, c.base)
	if !ok || len(rest) < 2 || rest[0] != '_' {
		return notOwn, 0, false
	}
	active = host == (c.prefix != "")
	s := rest[1:]
	switch {
	case allDigits(s):
		if len(s) == 1 && int(s[0]-'0') < maxChunks {
			return chunkCookie, int(s[0] - '0'), active
		}
		return badChunk, 0, active
	case rest == accessTokenSuffix || rest == idTokenSuffix:
		return tokenCookie, 0, active
	case len(rest) == len(flowSuffix)+flowIDLen && strings.HasPrefix(rest, flowSuffix) && base64URL(rest[len(flowSuffix):]):
		return flowCookie, 0, active
	}
	return notOwn, 0, false
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// base64URL tells whether s is made of base64url characters (a state).
func base64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
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

// uniqueCookie returns the value of the cookie name and how many times the
// request carries it (counting stops at 2). Only a count of 1 is usable: a
// second cookie of the same name comes from another Domain or Path (a
// sibling subdomain tossing one in), and which one a browser sends first is
// not ours to trust, so neither is used.
func uniqueCookie(r *http.Request, name string) (string, int) {
	var v string
	n := 0
	cookiePairs(r, func(k, value string) bool {
		if k == name {
			v = value
			n++
		}
		return n < 2
	})
	return v, n
}

// expireDeadChunks, for a request that got no session, expires the session
// chunks it carried (in either spelling): a duplicate or stray chunk tossed
// in from a sibling subdomain, under a Path only this request's URL
// matches, is deleted here rather than making every later login fail on
// this page.
func (o *OIDC) expireDeadChunks(w http.ResponseWriter, r *http.Request) {
	opts := o.cookieOpts(r)
	if _, _, _, present := scanChunks(r, opts, nil); present {
		writeChunked(w, r, opts, "", -1)
	}
}

// scanChunks reads the session chunks of the active spelling into chunks
// (nil: only check). bad is true when they cannot form a session: a
// duplicate name, an empty chunk, a chunk name spelled otherwise (_8, _01),
// or a gap (seen is then not 0..n-1). any tells that the request carries
// any chunk of this handler, in either spelling.
func scanChunks(r *http.Request, c cookieOpts, chunks *[maxChunks]string) (seen uint, size int, bad, present bool) {
	cookiePairs(r, func(name, value string) bool {
		kind, i, active := c.classify(name)
		if kind != chunkCookie && kind != badChunk {
			return true
		}
		present = true
		if !active {
			return true
		}
		if kind == badChunk || value == "" || seen&(1<<i) != 0 {
			bad = true
			return false
		}
		seen |= 1 << i
		size += len(value)
		if chunks != nil {
			chunks[i] = value
		}
		return true
	})
	if seen&(seen+1) != 0 { // not contiguous from 0
		bad = true
	}
	return seen, size, bad, present
}

// readChunked reassembles the session cookie from its chunks. It returns ""
// (no session) unless the request carries chunks 0..n-1 (n <= maxChunks)
// each exactly once and no other chunk-like name: never "the last one
// wins", so a cookie tossed in beside ours cannot choose the session.
// Cookies of the other spelling (without __Host- when it is in use) are not
// read.
func readChunked(r *http.Request, c cookieOpts) string {
	var chunks [maxChunks]string
	seen, size, bad, _ := scanChunks(r, c, &chunks)
	if bad || seen == 0 {
		return ""
	}
	n := bits.OnesCount(seen)
	if n == 1 {
		return chunks[0]
	}
	var b strings.Builder
	b.Grow(size)
	for _, v := range chunks[:n] {
		b.WriteString(v)
	}
	return b.String()
}

// maxCandidates bounds chunkCandidates (a browser keeps about 180 cookies
// per site, so every single-chunk value fits).
const maxCandidates = 256

// chunkCandidates lists every value the request's session chunks could
// form when some of them come twice or stray chunks stand beside them (a
// cookie tossed in beside ours): each chunk-0 value alone, then each choice
// of one value per chunk index 0..n-1 for n = 2, 3, ...; at most
// maxCandidates, and complete is false when that bound cut the list. Only
// logout uses it, to end the session whichever copy is ours; the request
// path never picks one (readChunked).
func chunkCandidates(r *http.Request, c cookieOpts) (out []string, complete bool) {
	var vals [maxChunks][]string
	n := 0
	cookiePairs(r, func(name, value string) bool {
		kind, i, active := c.classify(name)
		if kind != chunkCookie || !active || value == "" || slices.Contains(vals[i], value) {
			return true
		}
		vals[i] = append(vals[i], value)
		n = max(n, i+1)
		return true
	})
	prefixes := []string{""}
	for i := 0; i < n && len(vals[i]) > 0; i++ {
		var next []string
		for _, p := range prefixes {
			for _, v := range vals[i] {
				if len(out) >= maxCandidates {
					return out, false
				}
				next = append(next, p+v)
				out = append(out, p+v)
			}
		}
		prefixes = next
	}
	return out, true
}

// writeChunked sets value as the session chunks and expires every other
// session chunk the request carried (surplus chunks of a longer value,
// duplicates, strays like _8 or _01, the other spelling): readChunked
// refuses a value beside such a chunk, so one left behind would keep the
// user logged out. An empty value deletes every chunk.
func writeChunked(w http.ResponseWriter, r *http.Request, opts cookieOpts, value string, maxAge int) bool {
	var chunks []string
	if value != "" {
		chunks = splitChunks(value, maxChunkSize)
		if len(chunks) > maxChunks {
			return false
		}
	}
	for i, v := range chunks {
		http.SetCookie(w, opts.cookie(opts.name("_"+strconv.Itoa(i)), v, "/", maxAge, true))
	}
	var count [maxChunks]int
	var others []string
	cookiePairs(r, func(name, _ string) bool {
		kind, i, active := opts.classify(name)
		switch {
		case kind == chunkCookie && active:
			count[i]++
		case (kind == chunkCookie || kind == badChunk) && len(others) < 2*maxChunks && !contains(others, name):
			others = append(others, name)
		}
		return true
	})
	for i, n := range count {
		if n > 0 && (i >= len(chunks) || n > 1) {
			// A chunk we rewrote but that came twice: the other copy has
			// another Domain or Path; expire that one and keep ours.
			expireCookie(w, r, opts, opts.name("_"+strconv.Itoa(i)), i < len(chunks))
		}
	}
	for _, name := range others {
		expireCookie(w, r, opts, name, false)
	}
	return true
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// maxExpireDomains and maxExpirePaths bound the deletions expireCookie sends.
const (
	maxExpireDomains = 4
	maxExpirePaths   = 6
)

// expireCookie deletes the cookie name from the browser. A cookie is
// identified by name, Domain and Path, and the request does not say which
// ones a cookie has, so the deletion is sent for every Domain the browser
// could hold it under (host-only, the host, its parent domains, the
// configured cookie_domain) and every Path that matches this request. With
// keepOurs, the copy with our own attributes (Domain of cookie_domain or
// host-only, Path=/) is left alone, since the caller has just set it.
// A __Host- cookie exists only host-only at Path=/.
func expireCookie(w http.ResponseWriter, r *http.Request, opts cookieOpts, name string, keepOurs bool) {
	if strings.HasPrefix(name, hostPrefix) {
		if !keepOurs {
			http.SetCookie(w, &http.Cookie{Name: name, Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: opts.sameSite})
		}
		return
	}
	ours := strings.ToLower(strings.TrimPrefix(opts.domain, "."))
	for _, d := range cookieDomains(r, ours) {
		for _, p := range cookiePaths(r.URL.EscapedPath()) {
			if keepOurs && d == ours && p == "/" {
				continue
			}
			http.SetCookie(w, &http.Cookie{Name: name, Domain: d, Path: p, MaxAge: -1,
				Secure: opts.secure, HttpOnly: true, SameSite: opts.sameSite})
		}
	}
}

// cookieDomains are the Domain attributes under which a browser may hold a
// cookie it sends to this request's host: "" (host-only), the host, its
// parent domains (not the top-level label) and configured.
func cookieDomains(r *http.Request, configured string) []string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	out := []string{""}
	if configured != "" {
		out = append(out, configured)
	}
	if host == "" || net.ParseIP(host) != nil || !strings.Contains(host, ".") {
		return out
	}
	for d := host; strings.Contains(d, ".") && len(out) < maxExpireDomains+1; {
		if !contains(out, d) {
			out = append(out, d)
		}
		_, d, _ = strings.Cut(d, ".")
	}
	return out
}

// cookiePaths are the Path attributes of cookies a browser sends with a
// request for path: "/", and each leading segment of it with and without a
// trailing slash, bounded.
func cookiePaths(path string) []string {
	out := []string{"/"}
	for i := 0; i < len(path); i++ {
		if path[i] <= ' ' || path[i] >= 0x7f || path[i] == ';' {
			return out // not a valid cookie Path; only "/"
		}
	}
	for i := 1; i < len(path) && len(out) < maxExpirePaths; i++ {
		if path[i] == '/' {
			out = append(out, path[:i], path[:i+1])
		}
	}
	if len(path) > 1 && path[len(path)-1] != '/' && len(out) < maxExpirePaths {
		out = append(out, path)
	}
	if len(out) > maxExpirePaths {
		out = out[:maxExpirePaths]
	}
	return out
}

// stripCookies removes this handler's cookies from the request (the
// session chunks _0.._7 and chunk-like strays, the flow cookies, the
// exposed-token cookies, with or without the __Host- prefix), so that
// upstreams never see its sealed values. Every other cookie is forwarded
// byte for byte: its spelling, order, quoting and separators are kept, and
// a Cookie line without any of our cookies is not touched.
func stripCookies(r *http.Request, opts cookieOpts) {
	lines := r.Header["Cookie"]
	var out []string // the new lines, once one changed
	changed := false
	for i, line := range lines {
		if !hasOwnCookie(line, opts) {
			if changed {
				out = append(out, line)
			}
			continue
		}
		if !changed {
			// A new slice: header values may be shared with a clone of
			// the request. Allocated only when a line is left to keep.
			changed = true
			out = lines[:i:i]
		}
		if s := stripLine(line, opts); s != "" {
			out = append(out, s)
		}
	}
	if !changed {
		return
	}
	if len(out) == 0 {
		r.Header.Del("Cookie")
		return
	}
	r.Header["Cookie"] = out
}

// hasOwnCookie tells whether the Cookie line holds one of our cookies.
func hasOwnCookie(line string, opts cookieOpts) bool {
	if !strings.Contains(line, opts.base) {
		return false
	}
	for line != "" {
		var part string
		part, line, _ = strings.Cut(line, ";")
		if name, _, ok := strings.Cut(part, "="); ok {
			if k, _, _ := opts.classify(strings.TrimSpace(name)); k != notOwn {
				return true
			}
		}
	}
	return false
}

// stripLine removes our pairs from one Cookie line, each with one adjacent
// separator, keeping the rest of the bytes as they are.
func stripLine(line string, opts cookieOpts) string {
	var b strings.Builder
	first, removed := true, false // nothing kept yet, something removed
	for rest := line; ; {
		part, after, more := strings.Cut(rest, ";")
		name, _, ok := strings.Cut(part, "=")
		own := false
		if ok {
			k, _, _ := opts.classify(strings.TrimSpace(name))
			own = k != notOwn
		}
		if own {
			removed = true
		} else {
			if first && removed {
				// The line's first kept pair loses the space that
				// separated it from a removed one.
				part = strings.TrimLeft(part, " \t")
			} else if !first {
				b.WriteByte(';')
			}
			b.WriteString(part)
			first = false
		}
		if !more {
			break
		}
		rest = after
	}
	if first {
		return ""
	}
	return b.String()
}

// cookieOpts gives the cookie attributes and names for this request. The
// names get the __Host- prefix when the cookies are Secure and host-only
// (no cookie_domain), unless cookie_host_prefix is off: browsers then refuse
// such a cookie from a sibling subdomain or over plain HTTP.
func (o *OIDC) cookieOpts(r *http.Request) cookieOpts {
	secure := r.TLS != nil
	if o.CookieSecure != nil {
		secure = *o.CookieSecure
	}
	ss := http.SameSiteLaxMode
	switch o.CookieSameSite {
	case "strict":
		ss = http.SameSiteStrictMode
	case "none":
		ss = http.SameSiteNoneMode
		secure = true
	}
	c := cookieOpts{secure: secure, sameSite: ss, domain: o.CookieDomain, base: o.CookieName}
	if secure && o.CookieDomain == "" && (o.CookieHostPrefix == nil || *o.CookieHostPrefix) {
		c.prefix = hostPrefix
	}
	return c
}
