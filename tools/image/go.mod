module tpr.dev/tools/image

go 1.25.0
