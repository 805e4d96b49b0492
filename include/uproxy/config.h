/* config: the command line turned into one immutable struct config, with every validation
 * error explained. Pure: no sockets, no resolution, no ring; frozen once parsed. */
#ifndef UPROXY_CONFIG_H
#define UPROXY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "uproxy/addr.h"
#include "uproxy/log.h"

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

struct config {
	struct hostport listen;
	struct hostport upstream;
	enum log_level log_level;
	uint32_t buffer_size;
	uint32_t buffers;
	uint32_t max_conns; /* 0: derive from RLIMIT_NOFILE at start-up */
	uint32_t workers;   /* 0: one per CPU this process may run on ("auto") */
};

enum config_result {
	CONFIG_OK = 0,	 /* run with the config */
	CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
	CONFIG_USAGE = 2 /* err holds the reason: exit 2 */
};

void config_defaults(struct config *cfg);

/* Parses argv (argv[0] is the program name). --help/--version text goes to out. */
enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen);

void config_usage(FILE *out);

#endif
