"""What runs where: the Serve applications, their import paths, ports and gRPC servicers."""
