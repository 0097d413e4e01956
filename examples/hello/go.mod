module tpr.dev/examples/hello

go 1.25.0
