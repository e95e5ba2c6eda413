#!/bin/sh
# certbot deploy hook: after a certificate is renewed, nginx must reload to serve it.
# deploy.sh installs this as /etc/letsencrypt/renewal-hooks/deploy/reload-nginx.sh
# (certbot runs every executable there after each successful renewal).
set -eu
nginx -t -q
systemctl reload nginx
