#!/usr/bin/env bash
# The image cannot be built here (no container engine), so check that the Dockerfile and the chart agree: the
# chart runs what the image ships (user, ports, binary, config path, version tag) and the build context holds
# what cargo needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
dockerfile=helm/Dockerfile ignore=helm/Dockerfile.dockerignore
[[ -f $dockerfile && -f $ignore ]] || fail "$dockerfile and $ignore must exist"
fail() { echo "image check FAILED: $*" >&2; exit 1; }
n=0; pass() { n=$((n + 1)); }

cargo_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
app_version="$(sed -n 's/^appVersion: "\(.*\)"/\1/p' helm/hookgate/Chart.yaml)"
[[ "$cargo_version" == "$app_version" ]] || fail "Chart appVersion $app_version != Cargo version $cargo_version"; pass
grep -q "docker build -f $dockerfile -t hookgate:$cargo_version \." "$dockerfile" || fail "Dockerfile's build command does not tag hookgate:$cargo_version"; pass
grep -q '^  repository: hookgate$' helm/hookgate/values.yaml || fail "values.yaml image.repository is not hookgate"; pass
grep -q '^  tag: ""' helm/hookgate/values.yaml || fail "values.yaml image.tag should default to appVersion"; pass

uid="$(sed -n 's/^USER \([0-9]*\):\([0-9]*\)$/\1/p' "$dockerfile")"
[[ -n "$uid" && "$uid" != 0 ]] || fail "Dockerfile must end as a numeric non-root USER"; pass
grep -q "^  runAsUser: $uid " helm/hookgate/values.yaml || fail "chart runAsUser is not the image's user $uid"; pass
grep -q "^  runAsGroup: $uid$" helm/hookgate/values.yaml || fail "chart runAsGroup is not the image's group $uid"; pass

read -r -a exposed <<<"$(sed -n 's/^EXPOSE //p' "$dockerfile")"
https="$(sed -n 's/^  https: //p' helm/hookgate/values.yaml)"; admin="$(sed -n 's/^  admin: //p' helm/hookgate/values.yaml)"
[[ "${exposed[*]}" == "$https $admin" ]] || fail "EXPOSE ${exposed[*]} != chart ports $https $admin"; pass

grep -q '^ENTRYPOINT \["/usr/local/bin/hookgate"\]$' "$dockerfile" || fail "ENTRYPOINT is not the installed binary"; pass
config="$(sed -n 's/^config: //p' helm/hookgate/templates/_helpers.tpl)"
grep -q "^CMD \[\"run\", \"--config\", \"$config\"\]$" "$dockerfile" || fail "CMD config path != chart's $config"; pass

# The build context: what Cargo.toml names must not be ignored; the target dir and VCS data must be.
for needed in Cargo.toml Cargo.lock src benches tests; do
  grep -qx "$needed/\?" "$ignore" && fail ".dockerignore drops $needed, which cargo needs"; pass
done
for dropped in target/ .git/; do grep -qx "$dropped" "$ignore" || fail ".dockerignore keeps $dropped"; pass; done
rust="$(sed -n 's/^FROM rust:\([0-9.]*\)-.* AS build$/\1/p' "$dockerfile")"
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
[[ -n "$rust" ]] && [[ "$(printf '%s\n%s\n' "$msrv" "$rust" | sort -V | head -n 1)" == "$msrv" ]] \
  || fail "build image rust:$rust is older than rust-version $msrv"; pass
grep -q -- '--locked' "$dockerfile" || fail "the release build must use Cargo.lock (--locked)"; pass
echo "image checks: $n passed, 0 failed (the image itself cannot be built here: no container engine)"
