#!/usr/bin/env bash
# Refresh the web UI's vendored markdown renderer and sanitizer from npm:
# gateway/static/vendor/marked/ (marked, MIT) and gateway/static/vendor/dompurify/
# (DOMPurify, Apache-2.0 or MPL-2.0). The gateway serves them itself (no CDN);
# markdown.js imports them by relative path, so the page's CSP and import map
# stay as they are.
#
#   scripts/vendor_ui.sh           refresh the copies at the versions below
#   scripts/vendor_ui.sh --check   exit 1 if the copies differ from those tarballs
set -euo pipefail

MARKED=18.3.0
DOMPURIFY=3.5.0

root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/gateway/static/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" >/dev/null
mkdir m d out out/marked out/dompurify
tar xzf "marked-$MARKED.tgz" -C m
tar xzf "dompurify-$DOMPURIFY.tgz" -C d

# Source-map comments out: a browser would fetch the maps and get 404s.
sed '/^\/\/# sourceMappingURL=/d' m/package/lib/marked.esm.js >out/marked/marked.esm.js
cp m/package/lib/marked.d.ts out/marked/marked.esm.d.ts
cp m/package/LICENSE out/marked/LICENSE
printf 'marked %s (lib/marked.esm.js, npm %s), copied by scripts/vendor_ui.sh; licence MIT (LICENSE)\n' \
  "$MARKED" "$(npm view "marked@$MARKED" dist.integrity)" >out/marked/VERSION

sed '/^\/\/# sourceMappingURL=/d' d/package/dist/purify.es.mjs >out/dompurify/purify.es.mjs
cp d/package/dist/purify.es.d.mts out/dompurify/purify.es.d.mts
cp d/package/LICENSE out/dompurify/LICENSE
cp d/package/LICENSE-MPL out/dompurify/LICENSE-MPL
printf 'dompurify %s (dist/purify.es.mjs, npm %s), copied by scripts/vendor_ui.sh; licence Apache-2.0 (LICENSE) or MPL-2.0 (LICENSE-MPL)\n' \
  "$DOMPURIFY" "$(npm view "dompurify@$DOMPURIFY" dist.integrity)" >out/dompurify/VERSION

if [[ "${1:-}" == "--check" ]]; then
  diff -r out/marked "$vendor/marked" && diff -r out/dompurify "$vendor/dompurify"
  echo "vendored marked $MARKED and dompurify $DOMPURIFY match npm"
else
  rm -rf "$vendor/marked" "$vendor/dompurify"
  cp -r out/marked out/dompurify "$vendor/"
  echo "vendored marked $MARKED and dompurify $DOMPURIFY into $vendor"
fi
