#!/usr/bin/env bash
# Builds the llama.cpp baseline of docs/performance.md: llama-cpp-python 0.3.36 from source, twice,
# into two virtual environments under DIR (default .llamacpp/, ignored by git):
#   DIR/cpu     llama.cpp's CPU backend
#   DIR/vulkan  llama.cpp's Vulkan backend (Debian/Ubuntu: apt-get install glslc libvulkan-dev
#               spirv-headers). scripts/llamacpp-vulkan-guard.diff is applied first: it lets the
#               Vulkan backend build against Vulkan headers older than VK_EXT_layer_settings
#               (Debian 12's); with newer headers it changes nothing.
# Each build compiles llama.cpp with CMake: about 10 minutes on 2 cores. Then:
#   LLAMACPP_CPU_PY=DIR/cpu/bin/python LLAMACPP_VULKAN_PY=DIR/vulkan/bin/python scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.llamacpp}"
V=0.3.36
mkdir -p "$DIR/src"
for b in cpu vulkan; do
  [ -x "$DIR/$b/bin/python" ] || python3 -m venv "$DIR/$b"
done
if ! "$DIR/cpu/bin/python" -c "import llama_cpp" 2>/dev/null; then
  "$DIR/cpu/bin/pip" install --no-binary llama-cpp-python "llama-cpp-python==$V"
fi
if ! "$DIR/vulkan/bin/python" -c "import llama_cpp" 2>/dev/null; then
  src="$DIR/src/llama_cpp_python-$V"
  if [ ! -d "$src" ]; then
    python3 - "$V" "$DIR/src" <<'PY'
import re, sys, urllib.parse, urllib.request
v, out = sys.argv[1], sys.argv[2]
page = "https://pypi.org/simple/llama-cpp-python/"
index = urllib.request.urlopen(page).read().decode()
href = re.search(rf'href="([^"]*llama_cpp_python-{re.escape(v)}\.tar\.gz[^"]*)"', index).group(1)
url = urllib.parse.urljoin(page, href.split("#")[0])
urllib.request.urlretrieve(url, f"{out}/llama_cpp_python-{v}.tar.gz")
PY
    tar -xzf "$DIR/src/llama_cpp_python-$V.tar.gz" -C "$DIR/src"
    patch -d "$src" -p1 < scripts/llamacpp-vulkan-guard.diff
  fi
  CMAKE_ARGS="-DGGML_VULKAN=on" "$DIR/vulkan/bin/pip" install "$src"
fi
echo "setup-llamacpp: done; run:"
echo "  LLAMACPP_CPU_PY=$DIR/cpu/bin/python LLAMACPP_VULKAN_PY=$DIR/vulkan/bin/python scripts/bench-compare.sh"
