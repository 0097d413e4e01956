package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"
)

type fileSpec struct{ src, dst string }
type linkSpec struct{ dst, target string }

// A fixed timestamp keeps layers reproducible: same inputs, same digest.
var epoch = time.Unix(946684800, 0) // 2000-01-01

// entry is one path in the layer; the layer is written sorted by path so
// every parent directory comes before its children.
type entry struct {
	hdr  tar.Header
	from string // file to copy the content from, for regular files
}

// buildLayer returns an uncompressed tar layer holding the given files and
// symlinks and directories plus every parent directory and /tmp.
func buildLayer(files []fileSpec, links []linkSpec, dirs []string) ([]byte, error) {
	entries := map[string]*entry{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}
			}
		}
	}
	add := func(dst string, e *entry) error {
		if _, dup := entries[dst]; dup && e.hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%s is given twice", dst)
		}
		addDirs(dst)
		entries[dst] = e
		return nil
	}
	entries["/tmp"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o1777}}
	for _, d := range dirs {
		if err := add(path.Clean(d), &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}); err != nil {
			return nil, err
		}
	}

	for _, f := range files {
		// The source itself is followed if it is a symlink (an `ldd` path
		// such as /lib64/ld-linux-x86-64.so.2); inside a source directory
		// symlinks are kept as symlinks.
		info, err := os.Stat(f.src)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			if err := add(path.Clean(f.dst), fileEntry(f.src, info)); err != nil {
				return nil, err
			}
			continue
		}
		err = filepath.WalkDir(f.src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(f.src, p)
			if err != nil {
				return err
			}
			dst := path.Clean(path.Join(f.dst, filepath.ToSlash(rel)))
			info, err := os.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				return add(dst, &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}})
			case info.IsDir():
				return add(dst, &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: int64(info.Mode().Perm())}})
			case info.Mode().IsRegular():
				return add(dst, fileEntry(p, info))
			default:
				return fmt.Errorf("%s: only files, directories and symlinks can go into an image", p)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	for _, l := range links {
		e := &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Linkname: l.target, Mode: 0o777}}
		if err := add(path.Clean(l.dst), e); err != nil {
			return nil, err
		}
	}

	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		hdr := e.hdr
		hdr.Name = n[1:] // layer paths are relative to the root
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		hdr.ModTime = epoch
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&hdr); err != nil {
			return nil, err
		}
		if e.from != "" {
			if err := copyFile(tw, e.from, hdr.Size); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fileEntry(src string, info fs.FileInfo) *entry {
	return &entry{
		hdr:  tar.Header{Typeflag: tar.TypeReg, Mode: int64(info.Mode().Perm()), Size: info.Size()},
		from: src,
	}
}

func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if n != size {
		return fmt.Errorf("%s changed size while being copied", src)
	}
	return nil
}
