#!/usr/bin/env bash
# Installs the real DICOM peers the tests and the demo talk to (Debian packages + the OHIF build from npm).
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v /usr/bin/storescu >/dev/null || need+=(dcmtk)
command -v /usr/sbin/Orthanc >/dev/null || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v gdcmconv >/dev/null || need+=(libgdcm-tools)
command -v nginx >/dev/null || need+=(nginx)
command -v chromium >/dev/null || need+=(chromium)
# certutil: the HTTPS browser test trusts its test CA in a throw-away NSS database, as Chromium reads it.
command -v certutil >/dev/null || need+=(libnss3-tools)
# rsyslog: the audit record repository of tests/test_audit_rsyslog.py (UDP, and TLS through rsyslog-gnutls).
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || need+=(rsyslog-gnutls)
# Docker (tests/test_docker_deploy.py starts its own dockerd), Debian's compose (v1: bookworm has no compose plugin)
# and debootstrap (the tests' base image: no image registry is reachable).
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
# PostgreSQL and RabbitMQ: the cluster-mode tests (tests/peers/postgres.py, tests/peers/rabbitmq.py) start
# their own servers on loopback; the packages' services are not used.
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need+=(postgresql)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# OHIF viewer build (dist/) and playwright-core for the browser tests, kept in .peers/ (git-ignored).
mkdir -p .peers
if [ ! -f .peers/ohif/dist/index.html ]; then
  (cd .peers && rm -rf ohif package ohif-app-*.tgz && npm pack -q @ohif/app >/dev/null 2>&1 \
     && tar xzf ohif-app-*.tgz && mv package ohif && rm -f ohif-app-*.tgz)
fi
# The CPU torch wheel the node's image installs in the Docker test (deploy/Dockerfile; PyPI's torch pulls CUDA).
if ! compgen -G "deploy/wheels/torch-2.13.0*.whl" >/dev/null; then
  python3 -m pip download -q --no-deps "torch==2.13.0" -d deploy/wheels
fi
if [ ! -d .peers/node_modules/playwright-core ]; then
  (cd .peers && npm install -q --no-audit --no-fund playwright-core >/dev/null 2>&1)
fi
