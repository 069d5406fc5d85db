"""Data: the built-in digits set, image folders, CIFAR and MNIST files, and input preparation."""
