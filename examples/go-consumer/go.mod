module github.com/etcdconfig/etcdconfig/examples/go-consumer

go 1.24

require github.com/gowebpki/jcs v1.0.2
