package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTar returns a tarball's regular files and the headers of every entry.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]*tar.Header) {
	t.Helper()
	files, hdrs := map[string][]byte{}, map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func TestWriteImageLayout(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	mods := filepath.Join(dir, "mods")
	if err := os.MkdirAll(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mods, "a.so"), []byte("A"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a.so", filepath.Join(mods, "b.so")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	spec := &imageSpec{
		name: "demo:1.2", user: "7777:7777", workdir: "/",
		entrypoint: []string{"/app"}, env: []string{"A=1"},
		files: []fileSpec{{src: bin, dst: "/app"}, {src: mods, dst: "/usr/lib/x/mods"}},
		links: []linkSpec{{dst: "/usr/sbin/app2", target: "/app"}},
		dirs:  []string{"/run"},
	}
	if err := writeImage(out, spec); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files, _ := readTar(t, f)

	blob := func(d string) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d)
		}
		if digest(b) != d {
			t.Fatalf("blob %s has digest %s", d, digest(b))
		}
		return b
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout: %q", files["oci-layout"])
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	m := index.Manifests[0]
	if got := m.Annotations["io.containerd.image.name"]; got != "docker.io/library/demo:1.2" {
		t.Fatalf("containerd name %q", got)
	}
	if got := m.Annotations["org.opencontainers.image.ref.name"]; got != "1.2" {
		t.Fatalf("ref name %q", got)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(m.Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Config struct {
			Entrypoint []string
			User       string
			Env        []string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "7777:7777" || config.Config.Entrypoint[0] != "/app" {
		t.Fatalf("config: %+v", config.Config)
	}
	if len(manifest.Layers) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("layer %v vs diff ids %v", manifest.Layers, config.RootFS.DiffIDs)
	}

	layerFiles, hdrs := readTar(t, bytes.NewReader(blob(manifest.Layers[0].Digest)))
	if string(layerFiles["app"]) != "#!/bin/true\n" || hdrs["app"].Mode != 0o755 {
		t.Fatalf("app: %q mode %o", layerFiles["app"], hdrs["app"].Mode)
	}
	if string(layerFiles["usr/lib/x/mods/a.so"]) != "A" {
		t.Fatal("directory content missing")
	}
	if h := hdrs["usr/lib/x/mods/b.so"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "a.so" {
		t.Fatalf("symlink inside a directory not kept: %+v", h)
	}
	if h := hdrs["usr/sbin/app2"]; h == nil || h.Linkname != "/app" {
		t.Fatalf("-link missing: %+v", h)
	}
	for _, d := range []string{"run/", "tmp/", "usr/", "usr/sbin/"} {
		if h := hdrs[d]; h == nil || h.Typeflag != tar.TypeDir {
			t.Fatalf("directory %s missing", d)
		}
	}
	if hdrs["tmp/"].Mode != 0o1777 {
		t.Fatalf("/tmp mode %o", hdrs["tmp/"].Mode)
	}

	// Same inputs, same image.
	out2 := filepath.Join(dir, "img2.tar")
	if err := writeImage(out2, spec); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Fatal("image is not reproducible")
	}
}

func TestFullName(t *testing.T) {
	for in, want := range map[string]string{
		"hello":                   "docker.io/library/hello:latest",
		"hello:0.1.0":             "docker.io/library/hello:0.1.0",
		"me/hello:1":              "docker.io/me/hello:1",
		"localhost:5000/hello:1":  "localhost:5000/hello:1",
		"ghcr.io/org/tpr-agent:2": "ghcr.io/org/tpr-agent:2",
		"registry:5000/a/b":       "registry:5000/a/b:latest",
	} {
		if got, _ := fullName(in); got != want {
			t.Errorf("fullName(%q) = %q, want %q", in, got, want)
		}
	}
}
