package testdex_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testdex"
)

const envBuildHelper = "TESTDEX_BUILD_HELPER"

// TestBuildHelper is run by TestConcurrentBuildsShareOneBinary in a
// subprocess: it prints the binary's path.
func TestBuildHelper(t *testing.T) {
	if os.Getenv(envBuildHelper) == "" {
		t.Skip("helper for TestConcurrentBuildsShareOneBinary")
	}
	os.Stdout.WriteString("BINARY=" + testdex.Binary(t) + "\n")
}

// Two test binaries that find no cached dex at the same time build it once:
// one waits for the other's lock and then uses its binary. (The Go build
// cache is warm by now, so the second build is mostly a link.)
func TestConcurrentBuildsShareOneBinary(t *testing.T) {
	if runtime.GOOS == "windows" || testing.Short() {
		t.Skip("flock is Unix-only; -short skips a rebuild")
	}
	testdex.Binary(t) // warm the Go build cache (and fail here, not below, if building fails)
	cache := t.TempDir()
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBuildHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), envBuildHelper+"=1", testdex.EnvDexCache+"="+cache, testdex.EnvDexBinary+"=")
			cmd.Stdout, cmd.Stderr = &outs[i], &outs[i]
			errs[i] = cmd.Run()
		})
	}
	wg.Wait()
	var paths []string
	builds := 0
	for i := range 2 {
		out := outs[i].String()
		if errs[i] != nil {
			t.Fatalf("helper %d: %v\n%s", i, errs[i], out)
		}
		builds += strings.Count(out, "testdex: building dex")
		for _, line := range strings.Split(out, "\n") {
			if p, ok := strings.CutPrefix(line, "BINARY="); ok {
				paths = append(paths, p)
			}
		}
	}
	if builds != 1 || len(paths) != 2 || paths[0] != paths[1] || !strings.HasPrefix(paths[0], cache) {
		t.Fatalf("%d builds, paths %q (cache %s)\n%s\n%s", builds, paths, cache, outs[0].String(), outs[1].String())
	}
	out, err := exec.Command(paths[0], "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Dex Version: "+testdex.DexVersion) {
		t.Fatalf("%s version: %v\n%s", paths[0], err, out)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(paths[0]), "*.tmp"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}
