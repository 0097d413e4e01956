// Command k8s is one multi-call binary holding the Kubernetes components the
// test cluster runs (the way k3s does it: one link, one process per
// component). The component is chosen by the name the binary is called
// under or by the first argument: `k8s apiserver --flags...`.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // CronJob time zones, as the upstream mains do

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() int{
	"apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":            func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"proxy":              func() int { return cli.Run(proxy.NewProxyCommand()) },
	"kubectl":            runKubectl,
	"etcd":               runEtcd,
	"certs":              runCerts,
}

func runKubectl() int {
	logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
	command := kubectl.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func main() {
	name := strings.TrimPrefix(filepath.Base(os.Args[0]), "kube-")
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		name = os.Args[1]
		run, ok = components[name]
		// Shift so the component sees its own flags as os.Args[1:].
		os.Args = append([]string{"k8s-" + name}, os.Args[2:]...)
	}
	if !ok {
		names := make([]string, 0, len(components))
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: k8s <component> [flags]; components: %s\n", strings.Join(names, ", "))
		os.Exit(2)
	}
	os.Exit(run())
}
