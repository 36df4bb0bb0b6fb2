# The operator image: a wheel built in one stage, installed into a slim runtime that runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels "kopf>=1.45,<2" "kubernetes>=33" "cryptography>=44" "prometheus_client>=0.20"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels mtls-operator && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so runAsNonRoot can verify it; no shell login, no home needed.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["mtls-operator"]
CMD ["run"]
