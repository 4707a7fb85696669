"""The ``etcdconfig`` command line (also the kubectl plugin ``kubectl etcdconfig``)."""
