/*
 * libFuzzer harness: the pattern grammar and the rules-file parser.  The
 * first byte picks which; the rest is the pattern text or the rules file,
 * applied to a small fixed model so every parsed rule is also matched.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pattern.h"
#include "plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A one-MatMul model: ir_version 8, graph { node MatMul(X, W) -> Y, initializer W [16,8] }. */
static const char *model_path(void)
{
	static char path[64];
	if (path[0])
		return path;
	static uint8_t m[1024];
	size_t n = 0;
	uint8_t tensor[600], node[64], graph[800];
	size_t t = 0, nd = 0, g = 0;
	tensor[t++] = 0x08, tensor[t++] = 16;                /* dims 16 */
	tensor[t++] = 0x08, tensor[t++] = 8;                 /* dims 8 */
	tensor[t++] = 0x10, tensor[t++] = 1;                 /* FLOAT */
	tensor[t++] = 0x42, tensor[t++] = 1, tensor[t++] = 'W';
	tensor[t++] = 0x4a, tensor[t++] = 0x80, tensor[t++] = 0x04; /* raw_data, 512 bytes */
	for (int i = 0; i < 128; i++) {
		float f = (float)((i * 37) % 101) - 50.0f;
		memcpy(tensor + t, &f, 4);
		t += 4;
	}
	const char *fields[] = { "X", "W" };
	for (int i = 0; i < 2; i++)
		node[nd++] = 0x0a, node[nd++] = 1, node[nd++] = (uint8_t)fields[i][0];
	node[nd++] = 0x12, node[nd++] = 1, node[nd++] = 'Y';
	node[nd++] = 0x1a, node[nd++] = 2, node[nd++] = 'm', node[nd++] = 'm';
	node[nd++] = 0x22, node[nd++] = 6;
	memcpy(node + nd, "MatMul", 6);
	nd += 6;
	graph[g++] = 0x0a, graph[g++] = (uint8_t)nd;
	memcpy(graph + g, node, nd);
	g += nd;
	graph[g++] = 0x2a, graph[g++] = (uint8_t)(0x80 | (t & 0x7f)), graph[g++] = (uint8_t)(t >> 7);
	memcpy(graph + g, tensor, t);
	g += t;
	m[n++] = 0x08, m[n++] = 8;                           /* ir_version */
	m[n++] = 0x3a, m[n++] = (uint8_t)(0x80 | (g & 0x7f)), m[n++] = (uint8_t)(g >> 7);
	memcpy(m + n, graph, g);
	n += g;
	int fd = memfd_create("fixed.onnx", 0);
	if (pwrite(fd, m, n, 0) != (ssize_t)n)
		abort();
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	return path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	nmp_error err = { 0 };
	if (data[0] & 1) {
		char text[128];
		size_t n = size - 1 < sizeof text - 1 ? size - 1 : sizeof text - 1;
		memcpy(text, data + 1, n);
		text[n] = '\0';
		nmp_pattern p;
		if (nmp_pattern_parse(text, &p, &err) == NMP_OK) {
			if (p.structured && (p.n < 1 || p.n >= p.m || p.m > NMP_PATTERN_MAX_M))
				abort(); /* the parser let a malformed pattern through */
			if (nmp_pattern_group_cols(&p) == 0 || nmp_pattern_unit_rows(&p) == 0)
				abort();
		}
		return 0;
	}
	static int rfd = -1;
	static char rules[64];
	if (rfd < 0) {
		rfd = memfd_create("rules.json", 0);
		snprintf(rules, sizeof rules, "/proc/self/fd/%d", rfd);
	}
	if (ftruncate(rfd, 0) != 0 || pwrite(rfd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
		return 0;
	static const char *const none[1];
	nmp_select_opts so = { .pattern = "2:4", .align = "none", .ops = "MatMul", .include = none,
			       .exclude = none, .rules_path = rules };
	nmp_plan plan;
	if (nmp_plan_build(model_path(), &so, &plan, &err) == NMP_OK)
		nmp_plan_free(&plan);
	return 0;
}
