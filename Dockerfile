# The API image. MongoDB runs as its own service (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md NOTICE ./
COPY fhir_server ./fhir_server
COPY smart_auth ./smart_auth
COPY importers ./importers
COPY terminology ./terminology
COPY profiles ./profiles
COPY reports ./reports
RUN pip install --no-cache-dir .
ENV FHIR_HOST=0.0.0.0 FHIR_PORT=8080
EXPOSE 8080
USER nobody
CMD ["fhir-server", "serve"]
