"""The HTTP operations surface: health, metrics, JSON API, STOW-RS ingest and the worklist page.

Turned on by ``http.enabled`` (or ``ainode serve --http-port N``)::

    http:
      enabled: true
      bind_address: 127.0.0.1          # the node's own address; 0.0.0.0 in a container
      port: 8000
      tls: {cert_file: /etc/ainode/https.pem, key_file: /etc/ainode/https.key}   # HTTPS (+ HSTS)
      show_patient_identity: false     # patient name/ID on the page and in /api/studies
      priority_threshold: 0.5          # flag a study whose highest malignancy probability reaches this
      viewer_url_template: "http://localhost:3000/viewer?StudyInstanceUIDs={study_uid}"
      auth:
        mode: token                    # or basic (user name = credential name); hashes by `ainode hash-secret`
        open_health_on_loopback: true  # /healthz /readyz /metrics without credentials from 127.0.0.1/::1
        credentials:
          - {name: radiology, secret_hash: "sha256:...", role: viewer}     # read API + worklist
          - {name: admin, secret_hash: "sha256:...", role: operator}       # + re-run, retry, STOW-RS
          - {name: pacs, secret_hash: "sha256:...", role: sender, ae_title: PACSWEB}  # STOW-RS only

Endpoints: ``/healthz`` ``/readyz`` ``/metrics``; ``/api/me``, ``/api/studies[/{uid}]``,
``POST /api/studies/{uid}/rerun``, ``/api/series``, ``/api/jobs[/{id}]``, ``/api/deliveries[/{id}]``,
``POST /api/deliveries/{id}/retry`` (actions need role operator and the header ``X-AINode-Action: 1``);
``POST /dicom-web/studies`` (STOW-RS); ``/worklist`` (``/login`` in token mode).
"""
