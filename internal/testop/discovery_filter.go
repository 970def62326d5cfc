package testop

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
)

// serveDiscoveryWithout serves the OP's discovery document without the
// given fields (a provider that lacks those features).
func (o *OP) serveDiscoveryWithout(w http.ResponseWriter, r *http.Request, fields ...string) {
	rec := httptest.NewRecorder()
	o.handler.ServeHTTP(rec, r)
	var doc map[string]any
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	for _, f := range fields {
		delete(doc, f)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}
