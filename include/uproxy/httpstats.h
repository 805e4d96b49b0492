/* httpstats: the /metrics endpoint, served by worker 0 from its own ring (no extra thread).
 * A few scrape connections at a time, each with a deadline, so a slow or hostile scraper
 * can never hold traffic up; renders every worker's published snapshot. */
#ifndef UPROXY_HTTPSTATS_H
#define UPROXY_HTTPSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loop;
struct loop_cqe;
struct stats_snapshot;

/* Scrapes served at once; more are closed at accept. Prometheus scrapes one at a time. */
#define HTTPSTATS_MAX_CONNS 8
/* A scraper gets this long to send its request, and again to read the answer. */
#define HTTPSTATS_TIMEOUT_MS 2000
/* Largest request head accepted (a GET line and a few headers). */
#define HTTPSTATS_REQ_MAX 2048

struct httpstats_conn {
	int fd;
	bool busy;
	uint32_t len;
	char req[HTTPSTATS_REQ_MAX];
	char *resp;
	size_t resp_len, sent;
};

struct httpstats {
	struct loop *loop;	       /* worker 0's */
	struct stats_snapshot **snaps; /* every worker's published counters */
	int nsnaps;
	bool stopping; /* set by httpstats_stop: no more accepts */
	int fds[8];    /* listening sockets */
	int nfds;
	bool armed[8];
	struct httpstats_conn conns[HTTPSTATS_MAX_CONNS];
	uint64_t served, refused;
};

/* Starts accepting on the listeners already in hs->fds, through hs->loop. */
void httpstats_start(struct httpstats *hs);
/* Stops accepting (at shutdown); open scrapes finish or time out. */
void httpstats_stop(struct httpstats *hs);
/* A completion of one of its requests (tag op OP_STATS). The caller publishes its own
 * snapshot first, so the answer is current. */
void httpstats_handle(struct httpstats *hs, const struct loop_cqe *c);
void httpstats_destroy(struct httpstats *hs);

/* Parses a request head: 200 for "GET /metrics", 404 for another path, 405 for another
 * method, 400 when malformed, 0 when more bytes are needed. Pure; unit-tested. */
int httpstats_route(const char *req, size_t len);

#endif
