#!/bin/sh
# Install Debian's dataset-fashion-mnist package if the IDX files are not there yet.
# Without apt (or without root) kdistill can download the files itself: --set data.download=true.
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd="sudo"
  if ($sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then
    echo "installed Fashion-MNIST into $dir"
    exit 0
  fi
fi
echo "note: could not install dataset-fashion-mnist with apt; runs will download Fashion-MNIST with torchvision (data.download=true)"
