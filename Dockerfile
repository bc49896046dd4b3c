# syntax=docker/dockerfile:1
# pulsegate: build with dev dependencies, run with production ones only, as a non-root user.
ARG NODE_VERSION=22

FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json broker.config.ts ./
COPY src ./src
COPY simulators ./simulators
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    PULSEGATE_DATA_DIR=/data \
    PULSEGATE_LOG_FORMAT=json
WORKDIR /app
# tini reaps children and forwards SIGTERM, so the graceful shutdown (finish in-flight commits) runs on `docker stop`.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pulsegate && useradd --system --uid 10001 --gid pulsegate --home /data pulsegate \
 && mkdir -p /data && chown pulsegate:pulsegate /data
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --from=build --chown=root:root /app/src/transport/static ./dist/src/transport/static
COPY --chown=root:root package.json ./
COPY --chown=root:root migrations ./migrations
USER pulsegate
VOLUME ["/data"]
EXPOSE 1883 8883 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD node -e "fetch('http://127.0.0.1:'+(process.env.PULSEGATE_HTTP_PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "node", "dist/src/cli/main.js"]
CMD ["start"]
