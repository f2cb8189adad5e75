//! Datasets: the mla-dataset/1 reader, AV-MNIST preparation, the mini-batch loader.
