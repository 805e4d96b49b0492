/* config: the command line and config file turned into one immutable struct config, with every
 * validation error explained (file errors name the file and line). Reads the config file but
 * opens no socket, resolves no name and touches no ring; frozen once parsed. */
#ifndef UPROXY_CONFIG_H
#define UPROXY_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "uproxy/addr.h"
#include "uproxy/backend.h"
#include "uproxy/log.h"
#include "uproxy/loop.h"

/* 16 KiB matches the kernel's typical TSO chunk and HAProxy's bufsize; 2048 of them (32 MiB per
 * worker) keep 1,000 busy connections fed (see bench/RESULTS.md). */
#define CONFIG_DEFAULT_BUFFER_SIZE 16384u
#define CONFIG_DEFAULT_BUFFERS	   2048u
#define CONFIG_MIN_BUFFER_SIZE	   1024u
#define CONFIG_MAX_BUFFER_SIZE	   (1u << 20)
#define CONFIG_MIN_BUFFERS	   64u
#define CONFIG_MAX_BUFFERS	   32768u /* buffer ids are 16 bits; the ring holds 2^15 */
#define CONFIG_MAX_CONNS_LIMIT	   1000000u
#define CONFIG_MAX_WORKERS	   64u
#define CONFIG_MAX_UPSTREAMS	   64u	     /* --upstream entries; each may resolve to many */
#define CONFIG_MAX_MS		   86400000u /* one day: the longest timeout accepted */

#define CONFIG_DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define CONFIG_DEFAULT_RETRIES		  2u
#define CONFIG_DEFAULT_RESOLVE_INTERVAL_S 30u
#define CONFIG_DEFAULT_IDLE_TIMEOUT_MS	  600000u
#define CONFIG_DEFAULT_FIN_TIMEOUT_MS	  30000u
#define CONFIG_DEFAULT_DRAIN_TIMEOUT_MS	  10000u

struct config_upstream {
	struct hostport hp;
	uint32_t weight; /* 1..BACKEND_WEIGHT_MAX */
};

struct config {
	char config_path[PATH_MAX]; /* empty: no config file */
	struct hostport listen;
	struct hostport stats;	   /* --stats; port 0: off */
	char access_log[PATH_MAX]; /* --access-log; empty: off, "-": stdout */
	bool log_json;		   /* --log-format json */
	uint8_t send_proxy;	   /* --send-proxy: 0 off, 1 or 2 */
	bool accept_proxy;	   /* --accept-proxy */
	char user[64];		   /* --user; empty: keep the current user */
	struct config_upstream upstreams[CONFIG_MAX_UPSTREAMS];
	uint32_t nupstreams;
	enum backend_balance balance;
	enum log_level log_level;
	uint32_t buffer_size;
	uint32_t buffers;
	uint32_t max_conns; /* 0: derive from RLIMIT_NOFILE at start-up */
	uint32_t workers;   /* 0: one per CPU this process may run on ("auto") */
	uint32_t connect_timeout_ms;
	uint32_t retries;
	uint32_t fail_threshold;
	uint32_t fail_timeout_s;
	uint32_t health_interval_ms; /* 0: no active health checks */
	uint32_t resolve_interval_s; /* 0: resolve only at start-up (and on SIGHUP) */
	uint32_t idle_timeout_ms;
	uint32_t fin_timeout_ms;
	uint32_t drain_timeout_ms;
	enum loop_backend backend; /* --backend; main resolves auto once, before the workers */
};

enum config_result {
	CONFIG_OK = 0,	 /* run with the config */
	CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
	CONFIG_USAGE = 2 /* err holds the reason: exit 2 */
};

void config_defaults(struct config *cfg);

/* Parses argv (argv[0] is the program name), reading --config FILE first when given; options
 * on the command line override the file's. --help/--version text goes to out. */
enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen);

/* Applies the text of a config file (name is used in errors) on top of cfg. Exposed for tests
 * and the fuzzer; config_parse calls it. */
enum config_result config_parse_text(struct config *cfg, const char *text, size_t len,
				     const char *name, char *err, size_t errlen);

/* Parses "HOST:PORT[,weight=N]" into *out; returns 0 or -EINVAL with why. */
int config_parse_upstream(const char *s, struct config_upstream *out, const char **why);

void config_usage(FILE *out);

#endif
