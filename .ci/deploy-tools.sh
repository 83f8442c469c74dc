# The tools the deploy checks need, made available once and quietly; sourced by .ci/run, sets PYTHON and PROMTOOL.
#   PyYAML   Debian's python3-yaml, for the python3 that has it
#   promtool extracted from Debian's prometheus package into .ci/tools/ (installing the package would also
#            start a Prometheus server on port 9090, the service's metrics port)
#   kubectl  needed for `kubectl kustomize`; not installed here: Debian's kubernetes-client (1.20) has a kustomize
#            too old for the overlays' components
# Runs as root without sudo, or as a user with sudo.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo > /dev/null; then sudo -n "$@"
  else echo "needs root or sudo: $*" >&2; return 1
  fi
}

apt_lists_fresh=0
apt_update_once() {
  [ "$apt_lists_fresh" -eq 1 ] && return 0
  as_root apt-get update -qq > /dev/null && apt_lists_fresh=1
}

# Prints where a python3 with PyYAML is, installing python3-yaml if no python3 on PATH or in /usr/bin has it.
python_with_yaml() {
  local py
  for py in python3 /usr/bin/python3; do
    if "$py" -c 'import yaml' 2> /dev/null; then command -v "$py"; return 0; fi
  done
  apt_update_once && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml > /dev/null &&
    /usr/bin/python3 -c 'import yaml' && echo /usr/bin/python3
}

# Prints the path of promtool: on PATH, or extracted once from Debian's prometheus package into .ci/tools/.
promtool_path() {
  local tools=.ci/tools deb
  if command -v promtool > /dev/null; then command -v promtool; return 0; fi
  if [ -x "$tools/promtool" ]; then echo "$tools/promtool"; return 0; fi
  mkdir -p "$tools/deb" || return 1
  download() { (cd "$tools/deb" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" prometheus > /dev/null 2>&1); }
  download || { apt_update_once && download; } || { echo "apt-get download prometheus failed" >&2; return 1; }
  deb=$(ls "$tools"/deb/prometheus_*.deb | head -n 1)
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/promtool > "$tools/promtool.part" &&
    chmod +x "$tools/promtool.part" && mv "$tools/promtool.part" "$tools/promtool" && rm -rf "$tools/deb" &&
    echo "$tools/promtool"
}

deploy_tools() {
  local ok=0
  PYTHON=$(python_with_yaml) && echo "python: $PYTHON, PyYAML $("$PYTHON" -c 'import yaml; print(yaml.__version__)')" || { echo "no python3 with PyYAML (python3-yaml)"; ok=1; }
  PROMTOOL=$(promtool_path) && echo "promtool: $PROMTOOL, $("$PROMTOOL" --version 2>&1 | head -n 1)" || { echo "no promtool (Debian package prometheus)"; ok=1; }
  if command -v kubectl > /dev/null; then
    echo "kubectl: $(command -v kubectl), $(kubectl version --client 2>/dev/null | grep -i kustomize)"
  else
    echo "kubectl not found: install kubectl 1.27 or newer (its built-in kustomize renders deploy/k8s)"; ok=1
  fi
  return "$ok"
}
