/* Real third-party peers for the integration tests: finding their binaries,
 * nginx as a backend (a config written into a private temp dir, started in the
 * foreground, waited for by its listener), stopping them, and removing the
 * temp dirs they used. Only processes spawned here are ever signalled. */
#ifndef UPROXY_TEST_PEERS_H
#define UPROXY_TEST_PEERS_H

#include "harness.h"

#include <stdbool.h>
#include <stdint.h>

/* Path of an installed program (sbin and bin dirs); fails the test if absent. */
const char *find_prog(const char *name);
/* Makes a temp dir from tmpl ("/tmp/uproxy-...-XXXXXX"); fails the test if it cannot. */
void make_temp_dir(char *tmpl);
/* Removes a dir made by make_temp_dir and what a peer put in it (only under /tmp/uproxy-). */
void remove_tree(const char *dir);
void write_file(const char *path, const char *text);
/* Waits for a listener on 127.0.0.1:port (without connecting to it); false if p exited or
 * timeout_ms passed. */
bool wait_listening(struct proc *p, uint16_t port, int timeout_ms);
/* SIGTERM, ≤ 3 s, then SIGKILL; reaps and releases p. */
void stop_peer(struct proc *p, const char *name);

/* nginx in the foreground (no master, one worker) on 127.0.0.1:port. */
struct nginx_cfg {
	const char *dir;         /* its temp dir: config, pid, error log, temp paths */
	uint16_t port;
	const char *listen_opts; /* appended to "listen 127.0.0.1:port", NULL for none */
	const char *server_body; /* the rest of the server block, e.g. a location */
	int worker_connections;  /* 0: 64 */
	long nofile;             /* its RLIMIT_NOFILE (soft = hard), 0: inherit ours */
};

/* Writes the config, starts nginx and waits ≤ 5 s for its listener; asserts on failure
 * with its stderr. */
void nginx_start(struct proc *p, const struct nginx_cfg *cfg);

#endif
