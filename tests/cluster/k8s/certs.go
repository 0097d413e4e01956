package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// runCerts writes the cluster's PKI and kubeconfigs into -dir: one CA, the
// apiserver's serving certificate, a client identity per component, and the
// service-account signing key. Generated at `up`, thrown away at `down`.
func runCerts() int {
	fs := flag.NewFlagSet("certs", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory")
	node := fs.String("node", "tpr-node", "node name")
	nodeIP := fs.String("node-ip", "", "node IP (also an apiserver SAN)")
	serviceIP := fs.String("service-ip", "10.96.0.1", "the kubernetes Service's cluster IP")
	server := fs.String("server", "https://127.0.0.1:6443", "apiserver URL in kubeconfigs")
	fs.Parse(os.Args[1:]) //nolint:errcheck
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "certs: -dir is required")
		return 2
	}
	if err := writeCerts(*dir, *node, *nodeIP, *serviceIP, *server); err != nil {
		fmt.Fprintln(os.Stderr, "certs:", err)
		return 1
	}
	return 0
}

type keyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func writeCerts(dir, node, nodeIP, serviceIP, server string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := newCert(nil, pkix.Name{CommonName: "tpr-cluster-ca"}, nil, nil, true, 0)
	if err != nil {
		return err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(serviceIP)}
	if nodeIP != "" {
		ips = append(ips, net.ParseIP(nodeIP))
	}
	dns := []string{"localhost", node, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	serving, err := newCert(ca, pkix.Name{CommonName: "kube-apiserver"}, dns, ips, false, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	kubeletClient, err := newCert(ca, pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, nil, nil, false, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt":                       certPEM(ca),
		"ca.key":                       keyPEM(ca.key),
		"apiserver.crt":                certPEM(serving),
		"apiserver.key":                keyPEM(serving.key),
		"apiserver-kubelet-client.crt": certPEM(kubeletClient),
		"apiserver-kubelet-client.key": keyPEM(kubeletClient.key),
		"sa.key":                       keyPEM(sa),
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	files["sa.pub"] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})

	clients := map[string]pkix.Name{
		"admin":              {CommonName: "tpr-admin", Organization: []string{"system:masters"}},
		"controller-manager": {CommonName: "system:kube-controller-manager"},
		"scheduler":          {CommonName: "system:kube-scheduler"},
		"kubelet":            {CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		"proxy":              {CommonName: "system:kube-proxy"},
	}
	for name, subject := range clients {
		kp, err := newCert(ca, subject, nil, nil, false, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return err
		}
		files[name+".kubeconfig"] = kubeconfig(server, certPEM(ca), certPEM(kp), keyPEM(kp.key))
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func newCert(parent *keyPair, subject pkix.Name, dns []string, ips []net.IP, isCA bool, usage x509.ExtKeyUsage) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		DNSNames:     dns,
		IPAddresses:  ips,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	if isCA {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, der: der, key: key}, nil
}

func certPEM(kp *keyPair) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.der})
}

func keyPEM(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		panic(err) // only fails for unknown curves; P-256 is known
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func kubeconfig(server string, ca, cert, key []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tpr
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: tpr
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: tpr
  context:
    cluster: tpr
    user: tpr
current-context: tpr
`, server, b64(ca), b64(cert), b64(key)))
}
