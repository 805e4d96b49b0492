/* libFuzzer target for the text parsers of config and addr: config_parse_text on raw bytes
 * (a fresh config_defaults each time), addr_parse and config_parse_upstream on a NUL-terminated
 * copy. Checks what every accepted value must satisfy; never opens a file or resolves a name. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uproxy/addr.h"
#include "uproxy/backend.h"
#include "uproxy/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* Error buffer size: like main's, and small enough that long messages get truncated. */
#define FUZZ_ERR_LEN 256

static void check_hostport(const struct hostport *hp)
{
	CHECK(hp->unix_sock ? hp->port == 0 : hp->port != 0);
	CHECK(memchr(hp->host, '\0', sizeof(hp->host)) != NULL);
	CHECK(hp->unix_sock ? !hp->any && hp->host[0] != '\0' : hp->any == (hp->host[0] == '\0'));
}

static void check_config_text(const uint8_t *data, size_t size)
{
	static struct config cfg; /* ~20 KiB: off the stack */
	char err[FUZZ_ERR_LEN];
	enum config_result r;

	config_defaults(&cfg);
	memset(err, 0x55, sizeof(err));
	err[sizeof(err) - 1] = '\0';
	r = config_parse_text(&cfg, (const char *)data, size, "fuzz.conf", err, sizeof(err));
	CHECK(r == CONFIG_OK || r == CONFIG_USAGE); /* --help/--version are refused in a file */
	if (r == CONFIG_USAGE) {
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		CHECK(strncmp(err, "fuzz.conf:", 10) == 0);
		return;
	}
	CHECK(cfg.npools <= CONFIG_MAX_POOLS);
	CHECK(cfg.nlisteners <= CONFIG_MAX_LISTENERS);
	for (uint32_t p = 0; p < cfg.npools; p++) {
		const struct config_pool *cp = &cfg.pools[p];

		CHECK(cp->nupstreams >= 1 && cp->nupstreams <= CONFIG_MAX_UPSTREAMS);
		CHECK(memchr(cp->name, '\0', sizeof(cp->name)) != NULL && cp->name[0] != '\0');
		for (uint32_t i = 0; i < cp->nupstreams; i++) {
			check_hostport(&cp->upstreams[i].hp);
			CHECK(!cp->upstreams[i].hp.any);
			CHECK(cp->upstreams[i].weight >= 1);
			CHECK(cp->upstreams[i].weight <= BACKEND_WEIGHT_MAX);
		}
	}
	for (uint32_t i = 0; i < cfg.nlisteners; i++) {
		const struct config_listener *l = &cfg.listeners[i];

		/* Every listener reaches a pool, directly or through its routes. */
		CHECK(l->pool < cfg.npools || (l->pool == CONFIG_NO_POOL && l->nsni_routes > 0));
		for (uint32_t k = 0; k < l->nsni_routes; k++)
			CHECK(l->sni_routes[k].pool < cfg.npools);
		CHECK(l->nacl <= CONFIG_MAX_ACL);
		for (uint32_t j = 0; j < i; j++)
			CHECK(strcmp(l->name, cfg.listeners[j].name) != 0);
	}
	CHECK(cfg.buffer_size >= CONFIG_MIN_BUFFER_SIZE);
	CHECK(cfg.buffer_size <= CONFIG_MAX_BUFFER_SIZE);
	CHECK(cfg.buffers >= CONFIG_MIN_BUFFERS && cfg.buffers <= CONFIG_MAX_BUFFERS);
	CHECK((cfg.buffers & (cfg.buffers - 1)) == 0);
	CHECK(cfg.workers <= CONFIG_MAX_WORKERS);
}

/* An accepted address prints back to text that parses to the same thing. */
static void check_addr(const char *s)
{
	struct hostport hp, back;
	const char *why = NULL;
	char text[ADDR_HOST_MAX + 16];

	if (addr_parse(s, &hp, &why) < 0) {
		CHECK(why != NULL && why[0] != '\0');
		return;
	}
	check_hostport(&hp);
	addr_format_hostport(&hp, text, sizeof(text));
	why = NULL;
	CHECK(addr_parse(text, &back, &why) == 0);
	CHECK(back.port == hp.port && back.any == hp.any && back.unix_sock == hp.unix_sock &&
	      strcmp(back.host, hp.host) == 0);
}

static void check_upstream(const char *s)
{
	struct config_upstream up;
	const char *why = NULL;

	if (config_parse_upstream(s, &up, &why) < 0) {
		CHECK(why != NULL && why[0] != '\0');
		return;
	}
	check_hostport(&up.hp);
	CHECK(!up.hp.any);
	CHECK(up.weight >= 1 && up.weight <= BACKEND_WEIGHT_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	check_config_text(data, size);

	s = malloc(size + 1); /* exact size: ASan sees a read past the NUL */
	CHECK(s != NULL);
	memcpy(s, data, size);
	s[size] = '\0';
	check_addr(s);
	check_upstream(s);
	free(s);
	return 0;
}
