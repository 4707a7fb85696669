// Command go-consumer reads a Config that etcdconfig published into a ConfigMap and
// refuses it unless its content matches the published checksum.
//
// The operator writes the head's data as JSON under a key of the ConfigMap
// (config.json by default) and annotates the ConfigMap with
//
//	etcdconfig.io/version:  the version number
//	etcdconfig.io/checksum: "sha256:" + hex SHA-256 of the RFC 8785 (JCS) canonical JSON of the data
//
// The checksum is over the canonical form, not over the bytes in the ConfigMap, so a
// consumer canonicalises what it read (github.com/gowebpki/jcs, an RFC 8785
// implementation) and hashes that. Three ways to read:
//
//	# from the API server (in a pod: the service account; RBAC: get on that ConfigMap)
//	go-consumer -namespace prod -configmap payments-config
//
//	# a ConfigMap object as JSON, e.g. from kubectl
//	kubectl get configmap payments-config -o json | go-consumer -configmap-json -
//
//	# a mounted ConfigMap volume; the checksum is not in the volume (annotations are
//	# not mounted), so it comes from elsewhere: a value pinned in the Deployment, or a
//	# downwardAPI file of a pod annotation
//	go-consumer -file /etc/payments/config.json -checksum sha256:23be9a87...
//
// -watch 10s re-reads every 10 seconds and prints each new verified version; a read
// that does not verify is reported and the last verified configuration is kept.
//
// Exit codes: 0 verified, 1 error (unreadable, not JSON, API error), 2 usage,
// 3 checksum mismatch (the content is refused).
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gowebpki/jcs"
)

const (
	versionAnnotation  = "etcdconfig.io/version"
	checksumAnnotation = "etcdconfig.io/checksum"
	serviceAccountDir  = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// errMismatch marks content that does not hash to the checksum it was published with.
var errMismatch = errors.New("checksum mismatch")

// Canonical is the RFC 8785 form of a JSON text and its checksum: "sha256:" + hex
// SHA-256 of that form. jcs refuses duplicate object names and trailing content, so
// one text has one reading.
func Canonical(jsonText []byte) (canonical []byte, checksum string, err error) {
	canonical, err = jcs.Transform(jsonText)
	if err != nil {
		return nil, "", fmt.Errorf("not valid JSON: %w", err)
	}
	sum := sha256.Sum256(canonical)
	return canonical, "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Snapshot is one published configuration: the content and what it was published with.
type Snapshot struct {
	Content  []byte // the JSON text as read
	Version  string // etcdconfig.io/version ("" when not known, e.g. a mounted file)
	Checksum string // the expected checksum
	Source   string
}

// Verify refuses a snapshot whose content does not hash to its checksum; it returns the
// data decoded from the very bytes that were hashed (with UseNumber: numbers keep their
// canonical text).
func Verify(s Snapshot) (any, error) {
	if s.Checksum == "" {
		return nil, fmt.Errorf("%s: no checksum to verify against", s.Source)
	}
	canonical, got, err := Canonical(s.Content)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Source, err)
	}
	if got != strings.TrimSpace(s.Checksum) {
		return nil, fmt.Errorf("%w: %s hashes to %s, published as %s; refusing it",
			errMismatch, s.Source, got, s.Checksum)
	}
	dec := json.NewDecoder(bytes.NewReader(canonical))
	dec.UseNumber()
	var data any
	if err := dec.Decode(&data); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Source, err)
	}
	return data, nil
}

// configMap is the part of a v1 ConfigMap this program reads.
type configMap struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Data map[string]string `json:"data"`
}

func fromConfigMap(raw []byte, key, source string) (Snapshot, error) {
	var cm configMap
	if err := json.Unmarshal(raw, &cm); err != nil {
		return Snapshot{}, fmt.Errorf("%s: not a ConfigMap object: %w", source, err)
	}
	where := cm.Metadata.Namespace + "/" + cm.Metadata.Name
	content, ok := cm.Data[key]
	if !ok {
		return Snapshot{}, fmt.Errorf("ConfigMap %s has no key %q", where, key)
	}
	sum := cm.Metadata.Annotations[checksumAnnotation]
	if sum == "" {
		return Snapshot{}, fmt.Errorf("ConfigMap %s has no %s annotation (not published by etcdconfig?)",
			where, checksumAnnotation)
	}
	return Snapshot{
		Content:  []byte(content),
		Version:  cm.Metadata.Annotations[versionAnnotation],
		Checksum: sum,
		Source:   "ConfigMap " + where + " key " + key,
	}, nil
}

// apiSource reads a ConfigMap from the Kubernetes API with a bearer token.
type apiSource struct {
	server, token, namespace, name, key string
	client                              *http.Client
}

func newAPISource(server, tokenFile, caFile, namespace, name, key string) (*apiSource, error) {
	if server == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, errors.New("not in a pod (KUBERNETES_SERVICE_HOST unset): pass -server")
		}
		server = "https://" + host + ":" + port
		if tokenFile == "" {
			tokenFile = serviceAccountDir + "/token"
		}
		if caFile == "" {
			caFile = serviceAccountDir + "/ca.crt"
		}
	}
	src := &apiSource{server: strings.TrimRight(server, "/"), namespace: namespace, name: name, key: key}
	if tokenFile != "" {
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		src.token = strings.TrimSpace(string(tok))
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	src.client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	return src, nil
}

func (a *apiSource) read() (Snapshot, error) {
	u := a.server + "/api/v1/namespaces/" + url.PathEscape(a.namespace) +
		"/configmaps/" + url.PathEscape(a.name)
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return Snapshot{}, err
	}
	req.Header.Set("Accept", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return Snapshot{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return Snapshot{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Snapshot{}, fmt.Errorf("GET ConfigMap %s/%s: %s: %s",
			a.namespace, a.name, resp.Status, strings.TrimSpace(string(body)))
	}
	return fromConfigMap(body, a.key, "API")
}

func readFileOrStdin(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

type options struct {
	file, checksum, checksumFile  string
	configMapJSON                 string
	namespace, configMap, key     string
	server, tokenFile, caFile     string
	watch                         time.Duration
	printChecksum, quiet, compact bool
}

func (o *options) reader() (func() (Snapshot, error), error) {
	modes := 0
	for _, set := range []bool{o.file != "", o.configMapJSON != "", o.configMap != ""} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return nil, errors.New("give exactly one of -file, -configmap-json, -configmap")
	}
	switch {
	case o.file != "":
		if !o.printChecksum && (o.checksum == "") == (o.checksumFile == "") {
			return nil, errors.New("-file needs exactly one of -checksum, -checksum-file")
		}
		return func() (Snapshot, error) {
			content, err := readFileOrStdin(o.file)
			if err != nil {
				return Snapshot{}, err
			}
			sum := o.checksum
			if o.checksumFile != "" {
				b, err := os.ReadFile(o.checksumFile)
				if err != nil {
					return Snapshot{}, err
				}
				sum = strings.TrimSpace(string(b))
			}
			return Snapshot{Content: content, Checksum: sum, Source: o.file}, nil
		}, nil
	case o.configMapJSON != "":
		return func() (Snapshot, error) {
			raw, err := readFileOrStdin(o.configMapJSON)
			if err != nil {
				return Snapshot{}, err
			}
			return fromConfigMap(raw, o.key, o.configMapJSON)
		}, nil
	default:
		if o.namespace == "" {
			return nil, errors.New("-configmap needs -namespace")
		}
		src, err := newAPISource(o.server, o.tokenFile, o.caFile, o.namespace, o.configMap, o.key)
		if err != nil {
			return nil, err
		}
		return src.read, nil
	}
}

// apply is where a real application would swap in the new configuration.
func apply(o *options, s Snapshot, data any) error {
	if !o.quiet {
		fmt.Fprintf(os.Stderr, "verified %s version %s (%s)\n", s.Source, orUnknown(s.Version), s.Checksum)
	}
	var out []byte
	var err error
	if o.compact {
		out, err = json.Marshal(data)
	} else {
		out, err = json.MarshalIndent(data, "", "  ")
	}
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", out)
	return err
}

func orUnknown(v string) string {
	if v == "" {
		return "?"
	}
	return v
}

func run(o *options) int {
	read, err := o.reader()
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage:", err)
		return 2
	}
	if o.printChecksum {
		s, err := read()
		if err == nil {
			var sum string
			if _, sum, err = Canonical(s.Content); err == nil {
				fmt.Println(sum)
				return 0
			}
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	var last string // the checksum applied last
	for {
		code := 0
		s, err := read()
		if err == nil {
			var data any
			if data, err = Verify(s); err == nil && s.Checksum != last {
				err = apply(o, s, data)
				last = s.Checksum
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			code = 1
			if errors.Is(err, errMismatch) {
				code = 3
			}
			if o.watch > 0 && last != "" {
				fmt.Fprintln(os.Stderr, "keeping the configuration verified last:", last)
			}
		}
		if o.watch <= 0 {
			return code
		}
		time.Sleep(o.watch)
	}
}

func main() {
	var o options
	flag.StringVar(&o.file, "file", "", "a mounted ConfigMap key, e.g. /etc/app/config.json (- for stdin)")
	flag.StringVar(&o.checksum, "checksum", "", "with -file: the expected checksum (sha256:...)")
	flag.StringVar(&o.checksumFile, "checksum-file", "", "with -file: a file holding the expected checksum (e.g. a downwardAPI volume)")
	flag.StringVar(&o.configMapJSON, "configmap-json", "", "a ConfigMap object as JSON (- for stdin), e.g. kubectl get cm NAME -o json")
	flag.StringVar(&o.namespace, "namespace", "", "with -configmap: its namespace")
	flag.StringVar(&o.configMap, "configmap", "", "read this ConfigMap from the Kubernetes API")
	flag.StringVar(&o.key, "key", "config.json", "the ConfigMap key the Config is published under")
	flag.StringVar(&o.server, "server", "", "API server URL (default: in-cluster)")
	flag.StringVar(&o.tokenFile, "token-file", "", "bearer token file (default in-cluster: the service account token)")
	flag.StringVar(&o.caFile, "ca-file", "", "CA bundle of the API server (default in-cluster: the service account CA)")
	flag.DurationVar(&o.watch, "watch", 0, "re-read at this interval and apply each new verified version (0: once)")
	flag.BoolVar(&o.printChecksum, "print-checksum", false, "only print the checksum of the content (no verification)")
	flag.BoolVar(&o.quiet, "quiet", false, "do not report verified versions on stderr")
	flag.BoolVar(&o.compact, "compact", false, "print the data on one line")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	os.Exit(run(&o))
}
