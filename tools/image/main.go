// Command image assembles an OCI image tarball (an OCI image layout: the
// `oci-layout` file, `index.json` and `blobs/sha256/...`) from local files,
// without a base image or a container engine. The result is accepted by
// `ctr images import` and by registry tools (skopeo, crane, oras) as an
// `oci-archive`.
//
//	image -o out.tar -name tpr-agent:0.1.0 -entrypoint /tpr-agent \
//	    -user 7777:7777 -env K=V ./target/tpr-agent:/tpr-agent \
//	    -link /usr/sbin/iptables=xtables-nft-multi
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var spec imageSpec
	var links, dirs, env, entrypoint, cmd listFlag
	out := flag.String("o", "", "output tarball (required)")
	flag.StringVar(&spec.name, "name", "", "image name, e.g. tpr-agent:0.1.0 (required)")
	flag.StringVar(&spec.user, "user", "", "user[:group] the image runs as")
	flag.StringVar(&spec.workdir, "workdir", "/", "working directory")
	flag.Var(&entrypoint, "entrypoint", "entrypoint word (repeatable)")
	flag.Var(&cmd, "cmd", "default argument (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE (repeatable)")
	flag.Var(&links, "link", "symlink DST=TARGET (repeatable)")
	flag.Var(&dirs, "dir", "empty directory DST, mode 0755 (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: image -o OUT.tar -name NAME:TAG [flags] SRC:DST...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || spec.name == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	spec.entrypoint, spec.cmd, spec.env = entrypoint, cmd, env
	for _, arg := range flag.Args() {
		src, dst, ok := strings.Cut(arg, ":")
		if !ok || src == "" || !strings.HasPrefix(dst, "/") {
			fatal(fmt.Errorf("%q: expected SRC:/absolute/DST", arg))
		}
		spec.files = append(spec.files, fileSpec{src: src, dst: dst})
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || !strings.HasPrefix(dst, "/") || target == "" {
			fatal(fmt.Errorf("-link %q: expected /DST=TARGET", l))
		}
		spec.links = append(spec.links, linkSpec{dst: dst, target: target})
	}
	for _, d := range dirs {
		if !strings.HasPrefix(d, "/") {
			fatal(fmt.Errorf("-dir %q: expected an absolute path", d))
		}
		spec.dirs = append(spec.dirs, d)
	}
	if err := writeImage(*out, &spec); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}
