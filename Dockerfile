# The API image (also the bulk export workers'). MongoDB runs as its own service (see
# docker-compose.yml). It runs as the unprivileged user fhir, in /var/lib/fhir-server: a
# directory it owns, where `fhir-server import run` keeps its state (.fhir-import/) and
# reports and `auth create-client --generate-key` writes its keys; docker-compose.yml
# mounts a named volume there so they outlive the container.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md NOTICE ./
COPY fhir_server ./fhir_server
COPY smart_auth ./smart_auth
COPY importers ./importers
COPY terminology ./terminology
COPY profiles ./profiles
COPY reports ./reports
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/fhir-server fhir \
    && install -d -o fhir -g fhir -m 0750 /var/lib/fhir-server
ENV FHIR_HOST=0.0.0.0 FHIR_PORT=8080
EXPOSE 8080
USER fhir
WORKDIR /var/lib/fhir-server
CMD ["fhir-server", "serve"]
