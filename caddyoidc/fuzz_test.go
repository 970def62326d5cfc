package caddyoidc

// Fuzz targets for the code that handles attacker-controlled input before
// (or without) any signature check: redirect targets, sealed session cookies,
// chunked cookies, Authorization headers, claims and the Caddyfile. See
// TESTING.md for how to run them. Seed corpora live in testdata/fuzz/<Name>/.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	whatwg "github.com/nlnwa/whatwg-url/url"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// ---------------------------------------------------------------------------
// FuzzSafeBack

const fuzzSite = "site.example"

// hasCTL reports whether s holds an ASCII control character (C0 or DEL).
func hasCTL(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}

// FuzzSafeBack checks that the post-login redirect target can only ever
// stay on the site: safeBack returns "/" or its input, an accepted input is
// a plain absolute path, and the Location header the callback finally sends
// (http.Redirect(safeBack(back))) resolves, per Go and per the WHATWG URL
// standard browsers implement, to the same host.
func FuzzSafeBack(f *testing.F) {
	for _, s := range []string{"/", "/app?x=1#frag", "//evil.example", "/\\evil.example", "/%2f%2fevil", "/.//evil", "https://evil.example/"} {
		f.Add(s)
	}
	base, _ := url.Parse("https://" + fuzzSite + "/x")
	parser := whatwg.NewParser()
	f.Fuzz(func(t *testing.T, in string) {
		got := safeBack(in)
		if got != "/" && got != in {
			t.Fatalf("safeBack(%q) = %q: neither the input nor /", in, got)
		}
		if got != in {
			return // refused: "/" is checked by the seed corpus
		}
		if len(in) > 2048 || in[0] != '/' || strings.HasPrefix(in, "//") || strings.HasPrefix(in, "/\\") {
			t.Fatalf("accepted %q: not a single-slash absolute path", in)
		}
		if strings.Contains(in, "\\") || hasCTL(in) {
			t.Fatalf("accepted %q with a backslash or control character", in)
		}
		u, err := url.Parse(in)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
			t.Fatalf("accepted %q: url.Parse = %+v, %v", in, u, err)
		}
		if ru := base.ResolveReference(u); ru.Scheme != "https" || ru.Host != fuzzSite || ru.User != nil {
			t.Fatalf("accepted %q resolves to %q", in, ru)
		}
		if wu, err := parser.ParseRef(base.String(), in); err == nil && (wu.Hostname() != fuzzSite || wu.Protocol() != "https:") {
			t.Fatalf("accepted %q: a browser resolves it to %q", in, wu.Href(false))
		}
		if safeBack(in) != in {
			t.Fatalf("safeBack not idempotent on %q", in)
		}

		// The value travels as ?back= of the login URL (respond.go,
		// device.go) and comes back unchanged (flow.go).
		q, err := url.ParseQuery("back=" + url.QueryEscape(in))
		if err != nil || safeBack(q.Get("back")) != in {
			t.Fatalf("back=%q does not survive the login URL: %q, %v", in, q.Get("back"), err)
		}

		// The callback's redirect: http.Redirect cleans the path; the
		// Location header must stay on the site for Go and for browsers,
		// and its path must not become protocol-relative.
		rec := httptest.NewRecorder()
		http.Redirect(rec, httptest.NewRequest("GET", "https://"+fuzzSite+"/auth/callback", nil), in, http.StatusFound)
		loc := rec.Header().Get("Location")
		if hasCTL(loc) || strings.HasPrefix(loc, "//") || strings.HasPrefix(loc, "/\\") || !strings.HasPrefix(loc, "/") {
			t.Fatalf("back %q gives Location %q", in, loc)
		}
		lu, err := url.Parse(loc)
		if err != nil || lu.Host != "" || lu.Scheme != "" {
			t.Fatalf("back %q gives Location %q: %+v, %v", in, loc, lu, err)
		}
		wu, err := parser.ParseRef("https://"+fuzzSite+"/auth/callback", loc)
		if err == nil && (wu.Hostname() != fuzzSite || wu.Protocol() != "https:" || wu.Username() != "" || strings.HasPrefix(wu.Pathname(), "//")) {
			t.Fatalf("back %q: Location %q takes a browser to %q", in, loc, wu.Href(false))
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzSessionCookie

// fuzzCookieSecret is the fixed cookie secret of the session fuzz target.
// Seeds in testdata/fuzz/FuzzSessionCookie include values really sealed with
// it (label "cookies", purpose "session"), so the fuzzer starts from cookies
// that open and mutates them.
var fuzzCookieSecret = []byte("caddy-oidc fuzz cookie secret, 0123456789abcdef")

const fuzzCookieName = "caddy_oidc"

// fuzzChunkBase is the effective name of the session cookie for the fuzz
// requests (https, host-only: with the __Host- prefix).
const fuzzChunkBase = hostPrefix + fuzzCookieName

func fuzzSealer(tb testing.TB, secret []byte, label string) *seal.Sealer {
	s, err := seal.New(secret, label)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// fuzzOIDC is a handler with just what loadSession needs, and a fresh
// session cache.
func fuzzOIDC(s *seal.Sealer) *OIDC {
	return &OIDC{
		CookieName: fuzzCookieName, Session: "cookie",
		SessionLifetime: caddy.Duration(100 * 365 * 24 * time.Hour),
		rt:              fuzzRuntime(s),
	}
}

func fuzzRuntime(s *seal.Sealer) *runtime {
	rt := &runtime{sealer: s}
	rt.sessions = &cookieSessions{sealer: s, lifetime: 100 * 365 * 24 * time.Hour,
		cache: expiry.New[string, *session](64), revoked: &rt.revoked, m: &rt.m}
	return rt
}

func cookieRequest(header string) *http.Request {
	r := httptest.NewRequest("GET", "https://"+fuzzSite+"/", nil)
	if header != "" {
		r.Header.Set("Cookie", header)
	}
	return r
}

// chunkHeader cuts value into 1..maxChunks chunks at cut points taken from
// cuts, and returns a Cookie header carrying them in a shuffled order
// between unrelated cookies.
func chunkHeader(value string, cuts uint64) string {
	n := 1 + int(cuts%maxChunks)
	var pts []int
	for i := 1; i < n; i++ {
		cuts = cuts*6364136223846793005 + 1442695040888963407
		pts = append(pts, int((cuts>>33)%uint64(len(value)+1)))
	}
	slices.Sort(pts)
	var parts []string
	prev := 0
	for _, p := range pts {
		parts = append(parts, value[prev:p])
		prev = p
	}
	parts = append(parts, value[prev:])
	// Empty chunks do not exist in a browser (they would read as missing);
	// merge them away.
	parts = slices.DeleteFunc(parts, func(s string) bool { return s == "" })
	if len(parts) == 0 {
		parts = []string{""}
	}
	// Besides unrelated cookies, chunks without the prefix (tossed in by
	// a sibling subdomain) are never read.
	pairs := []string{"app=1", fuzzChunkBase + "_flow_abc=x", chunkName(fuzzCookieName, 0) + "=tossed",
		chunkName(fuzzCookieName, 1) + "=tossed"}
	for i, p := range parts {
		pairs = append(pairs, chunkName(fuzzChunkBase, i)+"="+p)
	}
	rng := rand.New(rand.NewPCG(cuts, uint64(len(value))))
	rng.Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	return strings.Join(pairs, "; ")
}

// fuzzSession builds a valid session from fuzz bytes.
func fuzzSession(payload []byte, header string) *session {
	sub := header
	if len(sub) > 64 {
		sub = sub[:64]
	}
	return &session{
		ID: "sid-" + base64.RawURLEncoding.EncodeToString(payload[:min(len(payload), 24)]),
		// Arbitrary bytes, invalid UTF-8 included, in token and claim fields.
		AccessToken: string(payload), RefreshToken: header, Expiry: int64(len(payload)),
		Created: time.Now().Unix(),
		Identity: &identity{Issuer: "https://op.example", Subject: "u" + sub,
			Claims: map[string]any{"sub": "u" + sub, "x": string(payload)}},
	}
}

// normalized is s after a JSON round trip (invalid UTF-8 becomes U+FFFD).
func normalized(t *testing.T, s *session) *session {
	n, err := decodeSession(encodeSession(s))
	if err != nil {
		t.Fatalf("a valid session does not decode: %v", err)
	}
	return n
}

func sameSession(a, b *session) bool {
	if a == nil || b == nil {
		return a == b
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb) && a.Identity.Source == b.Identity.Source
}

// FuzzSessionCookie drives loadSession (readChunked, Sealer.Open,
// decodeSession, the session cache) with arbitrary Cookie headers and with
// tampered, re-purposed and split values of really sealed sessions.
func FuzzSessionCookie(f *testing.F) {
	sealer := fuzzSealer(f, fuzzCookieSecret, "cookies")
	valid := sealer.Seal(encodeSession(fuzzSession([]byte("seed"), "alice")), "session")
	f.Add(fuzzChunkBase+"_0="+valid, []byte("payload"), uint32(0), uint64(0))
	f.Add(fuzzChunkBase+"_0="+valid+"; "+fuzzChunkBase+"_0="+valid, []byte("payload"), uint32(0), uint64(0))
	f.Add(fuzzChunkBase+"_0=garbage", []byte(`{"sid":"x","id":{"sub":"alice"}}`), uint32(0x101), uint64(3))
	others := map[string]*seal.Sealer{
		"other label":  fuzzSealer(f, fuzzCookieSecret, "grants"),
		"other secret": fuzzSealer(f, []byte("another secret, also at least 32 bytes long"), "cookies"),
	}
	f.Fuzz(func(t *testing.T, header string, payload []byte, tamper uint32, cuts uint64) {
		// 1. Arbitrary Cookie header. A session may only come out of a
		// value that opens as a "session" with our key and decodes to a
		// session with an id and a subject; nothing else opens it.
		o := fuzzOIDC(sealer)
		r := cookieRequest(header)
		s, err := o.loadSession(r)
		if err != nil {
			t.Fatalf("cookie sessions never fail with an error: %v", err)
		}
		raw := readChunked(r, o.cookieOpts(r))
		// A chunk name carried twice is never a session, whichever copy
		// would open.
		seen := map[string]bool{}
		dup := false
		cookiePairs(r, func(name, _ string) bool {
			if k, _, active := o.cookieOpts(r).classify(name); k == chunkCookie && active {
				dup = dup || seen[name]
				seen[name] = true
			}
			return true
		})
		if dup && (s != nil || raw != "") {
			t.Fatalf("duplicate chunk in %q gave a session (%q)", header, raw)
		}
		if s != nil {
			pt, err := sealer.Open(raw, "session")
			if err != nil {
				t.Fatalf("session loaded from a value that does not open: %q", raw)
			}
			ds, err := decodeSession(pt)
			if err != nil || ds.ID != s.ID || s.ID == "" || s.Identity == nil || s.Identity.Subject == "" || s.Identity.Source != "session" {
				t.Fatalf("loaded session %+v does not match its cookie (%v)", s, err)
			}
			for name, other := range others {
				if _, err := other.Open(raw, "session"); err == nil {
					t.Fatalf("session cookie opens with the %s", name)
				}
			}
			for _, p := range []string{"session-id", "flow:" + s.ID, "stored-session:" + s.ID, "device-csrf", ""} {
				if _, err := sealer.Open(raw, p); err == nil {
					t.Fatalf("session cookie opens with purpose %q", p)
				}
			}
			// The cached path gives the same session.
			if s2, _ := o.loadSession(cookieRequest(header)); s2 != s {
				t.Fatalf("second load gave %p, first %p", s2, s)
			}
		} else if raw != "" {
			if pt, err := sealer.Open(raw, "session"); err == nil {
				if ds, err := decodeSession(pt); err == nil && time.Since(time.Unix(ds.Created, 0)) <= time.Duration(o.SessionLifetime) {
					t.Fatalf("valid unexpired session cookie refused: %+v", ds)
				}
			}
		}

		// 2. Round trip: a valid session, sealed and split into chunks,
		// loads back equal.
		want := fuzzSession(payload, header)
		value := sealer.Seal(encodeSession(want), "session")
		got, err := fuzzOIDC(sealer).loadSession(cookieRequest(chunkHeader(value, cuts)))
		if err != nil || !sameSession(got, normalized(t, want).labelIdentity()) {
			t.Fatalf("round trip: got %+v, %v; want %+v", got, err, want)
		}

		// 3. Arbitrary plaintext sealed as a session loads iff it decodes
		// to a valid unexpired session.
		o = fuzzOIDC(sealer)
		got, _ = o.loadSession(cookieRequest(chunkHeader(sealer.Seal(payload, "session"), cuts>>8)))
		ds, derr := decodeSession(payload)
		ok := derr == nil && time.Since(time.Unix(ds.Created, 0)) <= time.Duration(o.SessionLifetime)
		if (got != nil) != ok || (got != nil && got.ID != ds.ID) {
			t.Fatalf("sealed payload %q: loaded %+v, decodeSession %+v, %v", payload, got, ds, derr)
		}

		// 4. The same session sealed for another purpose, or with another
		// key, is no session.
		plain := encodeSession(want)
		foreign := map[string]string{
			"session-id purpose":     sealer.Seal([]byte(want.ID), "session-id"),
			"session-id, same body":  sealer.Seal(plain, "session-id"),
			"flow purpose":           sealer.Seal(plain, "flow:"+want.ID),
			"stored-session purpose": sealer.Seal(plain, "stored-session:"+want.ID),
			"empty purpose":          sealer.Seal(plain, ""),
		}
		for name, other := range others {
			foreign[name] = other.Seal(plain, "session")
		}
		for name, v := range foreign {
			if s, _ := fuzzOIDC(sealer).loadSession(cookieRequest(chunkHeader(v, cuts))); s != nil {
				t.Fatalf("%s: opened as a session", name)
			}
		}

		// 5. Tampering with the sealed value: any change fails, including
		// a non-canonical base64 spelling of the same bytes.
		tampered := tamperValue(value, tamper)
		s, _ = fuzzOIDC(sealer).loadSession(cookieRequest(chunkHeader(tampered, cuts)))
		if s != nil && tampered != value {
			t.Fatalf("tampered value opened: %q -> %q", value, tampered)
		}
	})
}

// tamperValue changes a sealed value: op (low 3 bits) chooses a bit flip in
// the sealed bytes, a character substitution, truncation, an appended or
// removed character, or swapped halves; the rest of op is the position.
func tamperValue(v string, op uint32) string {
	raw, _ := base64.RawURLEncoding.DecodeString(v)
	pos := int(op >> 8)
	switch op & 7 {
	case 0, 1: // flip one bit of the sealed bytes
		raw[pos%len(raw)] ^= 1 << ((op >> 3) & 7)
		return base64.RawURLEncoding.EncodeToString(raw)
	case 2: // substitute one character
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		i := pos % len(v)
		c := alphabet[(strings.IndexByte(alphabet, v[i])+1+int(op>>3&31))%len(alphabet)]
		return v[:i] + string(c) + v[i+1:]
	case 3: // truncate
		return v[:pos%len(v)]
	case 4: // append
		return v + "A"
	case 5: // drop one character
		i := pos % len(v)
		return v[:i] + v[i+1:]
	case 6: // drop the nonce
		return base64.RawURLEncoding.EncodeToString(raw[12:])
	default: // swap halves
		return v[len(v)/2:] + v[:len(v)/2]
	}
}

// ---------------------------------------------------------------------------
// FuzzChunkedCookies

// cookieOctets are the characters RFC 6265 allows in a cookie value
// (cookie-octet); session values are base64url, a subset.
const cookieOctets = "!#$%&'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~"

// cookieValue maps fuzz bytes onto cookie-octets and repeats them up to n
// bytes (so values of several chunks are reached quickly).
func cookieValue(b []byte, n int) string {
	if len(b) == 0 || n == 0 {
		return ""
	}
	out := make([]byte, n)
	for i := range out {
		c := b[i%len(b)]
		if strings.IndexByte(cookieOctets, c) < 0 {
			c = cookieOctets[int(c)%len(cookieOctets)]
		}
		out[i] = c
	}
	return string(out)
}

// cookieToken keeps the RFC 6265 token characters of s (a valid cookie
// name), at most 32 of them.
func cookieToken(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 32; i++ {
		c := s[i]
		if c > 0x20 && c < 0x7f && !strings.ContainsRune(`()<>@,;:\"/[]?={}`, rune(c)) {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzChunkedCookies checks writeChunked against readChunked through a
// simulated browser cookie jar: whatever the jar held before (a previous
// session of up to maxChunks chunks, a stray or tossed chunk, chunks of the
// other spelling), after applying the Set-Cookie headers of writeChunked the
// jar reads back exactly the new value. Values too large for maxChunks
// chunks are refused without writing anything. No Set-Cookie header reaches
// the 4096-byte browser limit; __Host- cookies are Secure, host-only and
// Path=/. A chunk name carried twice is no session. stripCookies removes
// exactly this module's cookies and keeps every other byte of the header.
func FuzzChunkedCookies(f *testing.F) {
	f.Add([]byte("AbC-_09"), uint16(maxChunkSize*3+1), "caddy_oidc", "", uint8(5), uint64(1), int32(3600))
	f.Add([]byte("AbC-_09"), uint16(maxChunkSize+1), "caddy_oidc", "", uint8(2), uint64(0), int32(3600))
	f.Add([]byte("x"), uint16(10), "caddy_oidc", "sub", uint8(0x13), uint64(1<<40|1<<41|3), int32(60))
	f.Fuzz(func(t *testing.T, b []byte, n uint16, base, domain string, prev uint8, order uint64, maxAge int32) {
		base = cookieToken(base)
		if lb := strings.ToLower(base); base == "" || strings.HasPrefix(lb, "__host-") || strings.HasPrefix(lb, "__secure-") {
			base = fuzzCookieName // Validate refuses cookie names with a prefix
		}
		domain = cookieDomain(domain)
		// Up to one byte over the limit.
		value := cookieValue(b, int(n)%(maxChunks*maxChunkSize+2))
		age := int(maxAge)
		if age <= 0 {
			age = 1 - age
		}
		opts := cookieOpts{secure: order&1 == 0, sameSite: http.SameSite(1 + order>>1%4), domain: domain, base: base}
		if opts.secure && domain == "" {
			opts.prefix = hostPrefix
		}
		full := opts.prefix + base // the spelling in use
		bare := base               // the other one
		if opts.prefix == "" {
			bare = hostPrefix + base
		}
		// An unrelated cookie whose name does not start with base.
		other := "app"
		if strings.HasPrefix(other, base) {
			other = "zpp"
			if base[0] == 'z' {
				other = "ypp"
			}
		}

		// The jar: unrelated cookies (some whose names merely start with
		// ours), our flow and token cookies, and the chunks of a previous
		// value (contiguous from 0, as writeChunked leaves them: low 4 bits
		// of prev), perhaps with a stray chunk (high 4 bits) and a chunk of
		// the other spelling (bit 40 of order).
		flow := full + "_flow_" + "AbCdEfGh-_012345"
		unrelated := map[string]string{other: "1", base + "_flow_x": "y", base + "_prefs": "p", base + "_0x": "q", full + "_": "e"}
		jar := map[string]string{flow: "f", full + "_access_token": "t"}
		maps.Copy(jar, unrelated)
		count := int(prev&15) % (maxChunks + 1)
		for i := range count {
			jar[chunkName(full, i)] = "old" + strconv.Itoa(i)
		}
		stray := strayChunk(jar, full, count, prev>>4)
		if order>>40&1 == 1 {
			jar[chunkName(bare, 0)] = "tossed"
		}
		r := jarRequest(jar, order)

		// A second copy of a chunk (another Domain or Path) is no session.
		if count > 0 && stray == "" {
			dup := jarRequest(jar, order)
			dup.Header.Set("Cookie", dup.Header.Get("Cookie")+"; "+chunkName(full, int(order>>8)%count)+"=other")
			if got := readChunked(dup, opts); got != "" {
				t.Fatalf("duplicate chunk read as %q", got)
			}
		}

		rec := httptest.NewRecorder()
		ok := writeChunked(rec, r, opts, value, age)
		headers := rec.Header().Values("Set-Cookie")
		if !ok {
			if len(value) <= maxChunks*maxChunkSize {
				t.Fatalf("refused a value of %d bytes", len(value))
			}
			if len(headers) != 0 {
				t.Fatalf("refused value still set %d cookies", len(headers))
			}
			return
		}
		if len(value) > maxChunks*maxChunkSize {
			t.Fatalf("wrote a value of %d bytes (%d chunks)", len(value), len(headers))
		}
		set := 0
		for _, h := range headers {
			if len(h) >= 4096 {
				t.Fatalf("Set-Cookie of %d bytes", len(h))
			}
			c, err := http.ParseSetCookie(h)
			if err != nil {
				t.Fatalf("unparsable Set-Cookie %q: %v", h, err)
			}
			if len(c.Name)+len(c.Value) > 4096 || !c.HttpOnly {
				t.Fatalf("bad chunk cookie %q", h)
			}
			if strings.HasPrefix(c.Name, hostPrefix) && (!c.Secure || c.Domain != "" || c.Path != "/") {
				t.Fatalf("__Host- cookie a browser refuses: %q", h)
			}
			if k, _, _ := opts.classify(c.Name); k != chunkCookie && k != badChunk {
				t.Fatalf("wrote foreign cookie %q", c.Name)
			}
			if c.MaxAge < 0 {
				delete(jar, c.Name)
				continue
			}
			if !strings.HasPrefix(c.Name, full+"_") || c.Path != "/" {
				t.Fatalf("set chunk %q", h)
			}
			set++
			jar[c.Name] = c.Value
		}
		if want := (len(value) + maxChunkSize - 1) / maxChunkSize; set != want {
			t.Fatalf("%d chunks for %d bytes, want %d", set, len(value), want)
		}
		for k, v := range unrelated {
			if jar[k] != v {
				t.Fatalf("writeChunked touched the unrelated cookie %s", k)
			}
		}
		if jar[flow] != "f" || jar[full+"_access_token"] != "t" {
			t.Fatal("writeChunked touched the flow or token cookie")
		}

		// Upstreams never see our cookies; other cookies stay, byte for
		// byte, in a header spelled with odd separators and quotes.
		r = jarRequest(jar, order>>8)
		before := oddSpelling(r.Header.Get("Cookie"), order>>16)
		r.Header.Set("Cookie", before)
		stripCookies(r, opts)
		after := r.Header.Get("Cookie")
		var want []string
		for _, p := range strings.Split(before, ";") {
			if name, _, _ := strings.Cut(p, "="); opts.classifyName(name) == notOwn {
				want = append(want, p)
			}
		}
		if len(want) == len(strings.Split(before, ";")) {
			if after != before {
				t.Fatalf("nothing to strip, header changed: %q -> %q", before, after)
			}
		} else {
			got := strings.Split(after, ";")
			if after == "" {
				got = nil
			}
			if len(want) > 0 && len(got) > 0 {
				got[0] = strings.TrimLeft(got[0], " \t")
				want[0] = strings.TrimLeft(want[0], " \t")
			}
			if !slices.Equal(got, want) {
				t.Fatalf("stripCookies: %q -> %q, want the pairs %q", before, after, want)
			}
		}
		cookiePairs(r, func(name, _ string) bool {
			if k, _, _ := opts.classify(name); k != notOwn {
				t.Fatalf("cookie %q survives stripCookies: %q", name, after)
			}
			return true
		})
		for k, v := range unrelated {
			if c, err := r.Cookie(k); err != nil || c.Value != v {
				t.Fatalf("stripCookies removed the unrelated cookie %s: %q", k, after)
			}
		}

		// The browser now reads back the new value.
		if got := readChunked(jarRequest(jar, order>>8), opts); got != value {
			if stray != "" && knownBugStaleChunks {
				t.Skipf("known bug (TESTING.md): stray chunk %s outlives writeChunked", stray)
			}
			t.Fatalf("read back %d bytes, wrote %d (stray chunk: %q)", len(got), len(value), stray)
		}
	})
}

// oddSpelling rewrites a Cookie header "a=1; b=2" with the separators,
// spaces and quotes that clients send (no space, tabs, an empty pair, a
// quoted value), as chosen by seed.
func oddSpelling(h string, seed uint64) string {
	pairs := strings.Split(h, "; ")
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteString([]string{"; ", ";", ";\t", " ; ", ";;"}[seed%5])
			seed /= 5
		}
		if seed&1 == 1 {
			if name, v, ok := strings.Cut(p, "="); ok {
				p = name + `="` + v + `"`
			}
		}
		seed >>= 1
		b.WriteString(p)
	}
	return b.String()
}

// knownBugStaleChunks: writeChunked stops expiring old chunks at the first
// one the request lacks and never expires base_8.. or base_01, while
// readChunked refuses a value when such a chunk is present. A chunk left
// behind a gap (an evicted cookie) or a stray one (set by a sibling
// subdomain) makes every later read fail, logout included: a login loop
// until the cookie expires. The regression seeds
// testdata/fuzz/FuzzChunkedCookies/regression-* hit it. Set to false once
// the fix described in TESTING.md is in cookies.go.
const knownBugStaleChunks = false

// strayChunk adds to the jar, per mode, a chunk a browser may hold besides
// the contiguous ones: 1: a gap (an evicted middle chunk); 2: base_8 and
// up; 3: a leading-zero name; 0 (with bits above): a chunk after a gap.
// It returns the chunk's name ("" for none).
func strayChunk(jar map[string]string, base string, count int, mode uint8) string {
	if mode == 0 {
		return ""
	}
	n := int(mode >> 2)
	var name string
	switch mode & 3 {
	case 1:
		if count < 2 {
			return ""
		}
		name = chunkName(base, n%count)
		delete(jar, name)
		return name
	case 2:
		name = chunkName(base, maxChunks+n)
	case 3:
		name = base + "_0" + strconv.Itoa(n%maxChunks)
	default:
		name = chunkName(base, count+1+n)
	}
	jar[name] = "stray"
	return name
}

// classifyName classifies a raw name as stripCookies sees it.
func (c cookieOpts) classifyName(raw string) cookieKind {
	k, _, _ := c.classify(strings.TrimSpace(raw))
	return k
}

// cookieDomain turns s into a plausible cookie domain ("" for none): its
// letters and digits, at most 40, under .example.
func cookieDomain(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 40; i++ {
		if c := s[i] | 0x20; c >= 'a' && c <= 'z' || s[i] >= '0' && s[i] <= '9' {
			b.WriteByte(s[i])
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return strings.ToLower(b.String()) + ".example"
}

// jarRequest is a request carrying the jar's cookies in an order chosen by
// seed.
func jarRequest(jar map[string]string, seed uint64) *http.Request {
	var pairs []string
	for k, v := range jar {
		pairs = append(pairs, k+"="+v)
	}
	slices.Sort(pairs)
	rand.New(rand.NewPCG(seed, 7)).Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	return cookieRequest(strings.Join(pairs, "; "))
}

// ---------------------------------------------------------------------------
// FuzzBearerHeader

// parseChallenge parses `Bearer k="v", k="v"` strictly (RFC 7235 auth-params
// with quoted-string values) and returns the raw quoted values by name.
func parseChallenge(c string) (map[string]string, []string, bool) {
	rest, ok := strings.CutPrefix(c, "Bearer ")
	if !ok {
		return nil, nil, false
	}
	params := map[string]string{}
	var order []string
	for {
		name, after, ok := strings.Cut(rest, `="`)
		if !ok || name == "" || strings.ContainsAny(name, " ,\"") {
			return nil, nil, false
		}
		i, esc := 0, false
		for ; i < len(after); i++ {
			if esc {
				esc = false
				continue
			}
			if after[i] == '\\' {
				esc = true
			} else if after[i] == '"' {
				break
			}
		}
		if i == len(after) {
			return nil, nil, false // unterminated
		}
		if _, dup := params[name]; dup {
			return nil, nil, false
		}
		params[name] = after[:i]
		order = append(order, name)
		rest = after[i+1:]
		if rest == "" {
			return params, order, true
		}
		if rest, ok = strings.CutPrefix(rest, ", "); !ok {
			return nil, nil, false
		}
	}
}

// FuzzBearerHeader feeds arbitrary Authorization, Host and error strings to
// bearer token extraction and to the WWW-Authenticate challenge.
func FuzzBearerHeader(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "site.example", "invalid_token", "token expired", "GET", "navigate", "text/html")
	f.Fuzz(func(t *testing.T, auth, host, code, desc, method, fetchMode, accept string) {
		r := &http.Request{Method: method, Host: host, Header: http.Header{}}
		r.Header.Set("Authorization", auth)
		if fetchMode != "" {
			r.Header.Set("Sec-Fetch-Mode", fetchMode)
		}
		r.Header.Set("Accept", accept)

		tok, ok := bearerToken(r)
		if ok {
			if len(auth) < 7 || !strings.EqualFold(auth[:7], "bearer ") {
				t.Fatalf("%q taken for a bearer token", auth)
			}
			if tok != strings.TrimSpace(tok) || !strings.Contains(auth[7:], tok) {
				t.Fatalf("bearer token %q from %q", tok, auth)
			}
		} else if tok != "" {
			t.Fatalf("token %q without ok", tok)
		}
		if isJWT(tok) != (strings.Count(tok, ".") == 2) {
			t.Fatal("isJWT")
		}
		if i := strings.IndexByte(tok, '.'); i >= 0 && isJWT(tok) {
			payload := tok[i+1:]
			payload = payload[:strings.IndexByte(payload, '.')]
			var claims map[string]any
			if b, err := base64.RawURLEncoding.DecodeString(payload); err == nil && json.Unmarshal(b, &claims) == nil {
				_, hasNonce := claims["nonce"]
				if hasNonce && idp.IDTokenMarker(claims) == "" {
					t.Fatal("token with a nonce not taken for an ID token")
				}
			}
		}
		if (idp.IDTokenMarker(map[string]any{"typ": auth}) != "") != (auth == "ID") {
			t.Fatal("idTokenMarker typ")
		}

		for _, v := range []any{auth, host, []any{auth, host, 1.5, nil}, map[string]any{auth: host}} {
			if h := headerValue(v); hasCTL(h) {
				t.Fatalf("headerValue(%q) = %q", v, h)
			}
		}

		if nav := isNavigation(r); nav && (method != "GET" && method != "HEAD" || fetchMode != "" && fetchMode != "navigate") {
			t.Fatalf("isNavigation(%s, %q, %q) = true", method, fetchMode, accept)
		}

		rlm := realm(r)
		if strings.ContainsAny(rlm, "\"\\ ") || hasCTL(rlm) || strings.IndexFunc(rlm, func(c rune) bool { return c > 0x7e }) >= 0 {
			t.Fatalf("realm(%q) = %q", host, rlm)
		}
		c := (&OIDC{}).challenge(r, code, desc)
		if hasCTL(c) {
			t.Fatalf("challenge has a control character: %q", c)
		}
		params, order, ok := parseChallenge(c)
		if !ok || order[0] != "realm" || params["realm"] != rlm {
			t.Fatalf("challenge %q does not parse (%v, %v)", c, order, ok)
		}
		wantParams := 1
		if code != "" && code != "unauthorized" {
			wantParams = 2
			if got, err := strconv.Unquote(`"` + params["error"] + `"`); err != nil || got != code {
				t.Fatalf("challenge %q: error %q, want %q", c, got, code)
			}
			if desc != "" {
				wantParams = 3
				want := strings.ReplaceAll(desc, `"`, `'`)
				if got, err := strconv.Unquote(`"` + params["error_description"] + `"`); err != nil || got != want {
					t.Fatalf("challenge %q: error_description %q, want %q", c, got, want)
				}
			}
		}
		if len(order) != wantParams {
			t.Fatalf("challenge %q has params %v", c, order)
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzLookupClaim

// reachable returns every value lookupDotted could legitimately return for
// seg: the exact key, or a key before any dot followed by the rest.
func reachable(cur any, seg string, budget *int) []any {
	obj, ok := cur.(map[string]any)
	if !ok || *budget <= 0 {
		return nil
	}
	*budget--
	var out []any
	if v, ok := obj[seg]; ok {
		out = append(out, v)
	}
	for i := 1; i < len(seg); i++ {
		if seg[i] == '.' {
			if v, ok := obj[seg[:i]]; ok {
				out = append(out, reachable(v, seg[i+1:], budget)...)
			}
		}
	}
	return out
}

// FuzzLookupClaim walks arbitrary JSON claims with an arbitrary claim path
// (segments separated by newlines) and checks what comes out: the value is
// one the path can name, an exact key wins, claimStrings is well-formed and
// stable, and header values carry no control characters.
func FuzzLookupClaim(f *testing.F) {
	f.Add([]byte(`{"realm_access":{"roles":["a","b"]},"a.b":"dotted"}`), "realm_access.roles")
	f.Fuzz(func(t *testing.T, data []byte, pathSpec string) {
		var claims map[string]any
		if json.Unmarshal(data, &claims) != nil {
			return
		}
		var path []string
		if pathSpec != "" {
			path = strings.Split(pathSpec, "\n")
		}
		got := lookupClaim(claims, path)
		if len(path) == 0 {
			if m, ok := got.(map[string]any); !ok || !reflect.DeepEqual(m, claims) {
				t.Fatalf("empty path gave %v", got)
			}
		}

		// Sound: got is a value some reading of the path names.
		budget := 10000
		cands := []any{claims}
		exact, exactOK := any(claims), true
		for _, seg := range path {
			var next []any
			for _, c := range cands {
				next = append(next, reachable(c, seg, &budget)...)
			}
			cands = next
			if m, ok := exact.(map[string]any); ok && exactOK {
				exact, exactOK = m[seg]
			} else {
				exactOK = false
			}
		}
		if exactOK && !reflect.DeepEqual(got, exact) {
			t.Fatalf("path %q: got %v, but the exact keys give %v", path, got, exact)
		}
		if got != nil && budget > 0 && !slices.ContainsFunc(cands, func(c any) bool { return reflect.DeepEqual(c, got) }) {
			t.Fatalf("path %q: got %v, not a value the path names", path, got)
		}

		strs := claimStrings(got)
		if !reflect.DeepEqual(strs, claimStrings(got)) {
			t.Fatal("claimStrings not deterministic")
		}
		switch v := got.(type) {
		case nil:
			if strs != nil {
				t.Fatalf("claimStrings(nil) = %v", strs)
			}
			if claimMatches(v, []string{"null", ""}) {
				t.Fatal("a missing claim matches")
			}
		case string:
			want := strings.Map(func(r rune) rune {
				if r == ',' || r == ' ' {
					return -1
				}
				return r
			}, v)
			if strings.Join(strs, "") != want || slices.Contains(strs, "") {
				t.Fatalf("claimStrings(%q) = %q", v, strs)
			}
			if !claimMatches(v, []string{v}) {
				t.Fatalf("claimMatches(%q, itself) = false", v)
			}
		case []any:
			if len(strs) != len(v) {
				t.Fatalf("claimStrings of %d elements gave %d", len(v), len(strs))
			}
			for i, e := range v {
				if strs[i] != claimScalar(e) || !claimMatches(v, []string{strs[i]}) {
					t.Fatalf("element %d: %q", i, strs[i])
				}
			}
		case map[string]any:
			if len(strs) != len(v) || !slices.IsSorted(strs) {
				t.Fatalf("claimStrings of a %d-key object gave %q", len(v), strs)
			}
			for _, k := range strs {
				if _, ok := v[k]; !ok {
					t.Fatalf("claimStrings gave %q, not a key", k)
				}
			}
		default: // bool, float64
			if len(strs) != 1 || strs[0] != claimScalar(v) || !claimMatches(v, strs) {
				t.Fatalf("claimStrings(%v) = %q", v, strs)
			}
			// Integers render without a fraction. (-0 renders "-0".)
			if x, ok := v.(float64); ok && x > -1<<53 && x < 1<<53 && x == float64(int64(x)) && !math.Signbit(x) {
				if strs[0] != strconv.FormatInt(int64(x), 10) {
					t.Fatalf("integer claim %v renders as %q", x, strs[0])
				}
			}
		}
		if h := headerValue(got); hasCTL(h) {
			t.Fatalf("headerValue = %q", h)
		}

		// The identity built from these claims is consistent and its
		// upstream headers are clean.
		id := newIdentity(claims, path, nil)
		if want := claimStrings(got); len(want) > 0 && !reflect.DeepEqual(id.Roles, want) {
			t.Fatalf("roles %q, want %q", id.Roles, want)
		}
		for _, h := range id.vars("").headers {
			if hasCTL(h) {
				t.Fatalf("identity header %q", h)
			}
		}
		for name, v := range id.vars("").placeholders {
			if hasCTL(v) {
				t.Fatalf("placeholder %s = %q", name, v)
			}
			if got, ok := id.placeholder(placeholderPrefix + name); !ok || got != v {
				t.Fatalf("placeholder(%s) = %v, %v; want %q", name, got, ok, v)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzUnmarshalCaddyfile

// fuzzDispenser tokenizes input like caddyfile.NewTestDispenser, which
// log.Fatal()s on a lexer error (an unterminated quote or heredoc) and would
// kill the fuzzing process; such inputs are not our parser's business.
func fuzzDispenser(input string) (*caddyfile.Dispenser, bool) {
	tokens, err := caddyfile.Tokenize([]byte(input), "Testfile")
	if err != nil {
		return nil, false
	}
	return caddyfile.NewDispenser(tokens), true
}

// jsonStable checks that v marshals, and that unmarshalling that JSON into
// fresh (a pointer to a zero value of v's type) marshals to the same JSON.
func jsonStable(t *testing.T, v, fresh any) {
	t.Helper()
	b1, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	if err := json.Unmarshal(b1, fresh); err != nil {
		t.Fatalf("json.Unmarshal of %s: %v", b1, err)
	}
	b2, err := json.Marshal(fresh)
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("JSON not stable:\n%s\n%s (%v)", b1, b2, err)
	}
}

// FuzzUnmarshalCaddyfile parses arbitrary text inside `oidc { ... }`. It
// must never panic; what parses must marshal to JSON (the form Caddy runs)
// and come back the same, and Validate must not panic on it.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("issuer https://idp.example.com\nclient_id app\nscopes openid profile")
	f.Fuzz(func(t *testing.T, body string) {
		d, ok := fuzzDispenser("oidc {\n" + body + "\n}")
		if !ok {
			return
		}
		o := new(OIDC)
		if err := o.UnmarshalCaddyfile(d); err != nil {
			return
		}
		jsonStable(t, o, new(OIDC))
		for _, r := range o.RequireRoles {
			if len(r) == 0 {
				t.Fatal("require_role without roles parsed")
			}
		}
		for _, r := range o.RequireClaims {
			if len(r.Values) == 0 {
				t.Fatal("require_claim without values parsed")
			}
		}
		if o.AZAT != nil {
			switch o.AZAT.Signer {
			case "", "local", "kms":
			default:
				t.Fatalf("signer %q parsed", o.AZAT.Signer)
			}
		}
		_ = o.Validate()
	})
}
