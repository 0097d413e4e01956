// Command hello is the example app tpr's tests and demo run in the cluster.
//
//	hello [serve]                 serve HTTP on $PORT (default 8080)
//	hello get URL [-H k:v]... [-wait 30s]
//	                              print URL's body; exit 1 on failure
//	hello get URL -n 20 [-interval 250ms] [-new] [-H k:v]...
//	                              n requests on one keep-alive connection
//	                              (-new: a new connection each), one line
//	                              each: "reused=<bool> <body>"
//	hello sleep                   wait until stopped (a pod to exec into)
//
// Server paths: / answers "hello from <$HELLO_WHO or hostname>";
// /env?name=X returns the value of env var X; /headers echoes the request
// headers as JSON; /healthz answers ok; /peer answers the client's IP
// address as this server sees it; /blob?n=N sends N bytes of a fixed
// pseudo-random stream (xorshift64 from seed 1, each state little-endian);
// POST /sum answers "<length> <sha256 hex>" of the request body. /page,
// /style.css and /api/who are the browser preview test's page, its
// stylesheet and what its script fetches, each naming $HELLO_WHO or
// "cluster" (tests/up/fixtures/preview_page.py serves the same page naming
// "workstation").
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve()
	case "get":
		err = get(args)
	case "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	default:
		err = fmt.Errorf("unknown command %q (serve, get, sleep)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
}

func who() string {
	if w := os.Getenv("HELLO_WHO"); w != "" {
		return w
	}
	h, _ := os.Hostname()
	return h
}

// previewPage and previewStyle ("{who}" replaced): byte for byte the PAGE
// and STYLE of tests/up/fixtures/preview_page.py.
const previewPage = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>tpr preview test page</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<h1>page from <span id="page">{who}</span></h1>
<p>stylesheet from <span id="style">?</span></p>
<p>/api/who from <span id="api">?</span></p>
<pre id="result">pending</pre>
<script>
const style = getComputedStyle(document.documentElement)
  .getPropertyValue("--who").trim().replace(/^"|"$/g, "") || "none";
document.getElementById("style").textContent = style;
fetch("/api/who", {cache: "no-store"})
  .then(r => r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status)))
  .then(t => t.trim(), e => "error: " + e.message)
  .then(api => {
    document.getElementById("api").textContent = api;
    document.getElementById("result").textContent =
      "page={who} style=" + style + " api=" + api;
  });
</script>
</body>
</html>
`

const previewStyle = `:root { --who: "{who}"; }
body { font-family: sans-serif; margin: 2em; }
#style::after { content: " (" var(--who) ")"; color: #666; }
`

// place names this server on the preview page: $HELLO_WHO, else "cluster".
func place() string {
	if w := os.Getenv("HELLO_WHO"); w != "" {
		return w
	}
	return "cluster"
}

func preview(ctype, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, strings.ReplaceAll(body, "{who}", place()))
	}
}

func serve() error {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", who())
	})
	mux.HandleFunc("GET /peer", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintln(w, host)
	})
	mux.HandleFunc("GET /blob", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n: a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		writeBlob(w, n)
	})
	mux.HandleFunc("POST /sum", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("GET /page", preview("text/html; charset=utf-8", previewPage))
	mux.HandleFunc("GET /style.css", preview("text/css; charset=utf-8", previewStyle))
	mux.HandleFunc("GET /api/who", preview("text/plain; charset=utf-8", "{who}\n"))
	// An upstream that fails mid-request, as its clients see it: the
	// connection is reset (tests check a reset crosses tpr as a reset).
	mux.HandleFunc("GET /reset", func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.SetLinger(0)
		}
		conn.Close()
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		value, ok := os.LookupEnv(name)
		if name == "" || !ok {
			http.Error(w, fmt.Sprintf("no env var %q", name), http.StatusNotFound)
			return
		}
		writeJSON(w, map[string]string{"name": name, "value": value})
	})
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		h := map[string]string{"Host": r.Host}
		for k, v := range r.Header {
			h[k] = strings.Join(v, ", ")
		}
		writeJSON(w, h)
	})
	srv := &http.Server{Addr: ":" + port, Handler: logRequests(mux), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Close()
	}()
	fmt.Printf("hello: %s listening on :%s\n", who(), port)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("%s %s from %s\n", r.Method, r.URL.RequestURI(), r.RemoteAddr)
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

type headerFlag []string

func (h *headerFlag) String() string     { return strings.Join(*h, ",") }
func (h *headerFlag) Set(v string) error { *h = append(*h, v); return nil }

// get fetches a URL once, or retries until -wait runs out; a pod running it
// thus reports success or failure through its exit status and its log.
func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	var headers headerFlag
	fs.Var(&headers, "H", "request header k:v (repeatable)")
	wait := fs.Duration("wait", 0, "keep retrying failures for this long")
	count := fs.Int("n", 1, "requests to send on one keep-alive connection")
	interval := fs.Duration("interval", 0, "pause between those requests")
	fresh := fs.Bool("new", false, "open a new connection for each of those requests")
	// Flags may come before or after the URL.
	var url string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		if url != "" {
			return fmt.Errorf("get: one URL expected, got %q and %q", url, fs.Arg(0))
		}
		url, args = fs.Arg(0), fs.Args()[1:]
	}
	if url == "" {
		return errors.New("usage: hello get URL [-H k:v]... [-wait 30s]")
	}
	if *count > 1 {
		return repeat(url, headers, *count, *interval, *fresh)
	}
	deadline := time.Now().Add(*wait)
	client := &http.Client{Timeout: 10 * time.Second}
	for {
		body, err := fetch(client, url, headers, nil)
		if err == nil {
			_, err = os.Stdout.Write(body)
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		fmt.Fprintln(os.Stderr, "hello: retrying:", err)
		time.Sleep(time.Second)
	}
}

// repeat sends n requests on one keep-alive connection (as a pooling proxy
// would) and prints one line per answer, saying whether the connection was
// reused; a failed request prints "error: ..." and goes on.
func repeat(url string, headers []string, n int, interval time.Duration, fresh bool) error {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxConnsPerHost: 1, DisableKeepAlives: fresh},
	}
	for i := 0; i < n; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		reused := false
		trace := &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
		}
		body, err := fetch(client, url, headers, trace)
		if err != nil {
			fmt.Printf("error: %v\n", err)
			continue
		}
		fmt.Printf("reused=%v %s\n", reused, strings.TrimSpace(string(body)))
	}
	return nil
}

func fetch(client *http.Client, url string, headers []string, trace *httptrace.ClientTrace) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if trace != nil {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return nil, fmt.Errorf("header %q: expected k:v", h)
		}
		if strings.EqualFold(strings.TrimSpace(k), "host") {
			req.Host = strings.TrimSpace(v)
			continue
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// writeBlob writes n bytes of the xorshift64 stream seeded with 1.
func writeBlob(w io.Writer, n int64) {
	buf := make([]byte, 64<<10)
	x := uint64(1)
	for n > 0 {
		for i := 0; i < len(buf); i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(buf[i:], x)
		}
		m := int64(len(buf))
		if n < m {
			m = n
		}
		if _, err := w.Write(buf[:m]); err != nil {
			return
		}
		n -= m
	}
}
