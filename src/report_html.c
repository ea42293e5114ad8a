/*
 * report_html.c — the prune report as one self-contained HTML page: a
 * summary, an inline SVG chart of sparsity and kept magnitude per layer in
 * graph order (skipped layers marked, their reason on hover and in the
 * table), and the per-weight table.  No scripts, fonts or images are
 * fetched: the page renders offline.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "report.h"
#include "version.h"

static void esc(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&': fputs("&amp;", f); break;
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '"': fputs("&quot;", f); break;
		case '\'': fputs("&#39;", f); break;
		default:
			if ((unsigned char)*s >= 0x20)
				fputc(*s, f);
		}
	}
}

static double pct(double a, double b)
{
	return 100.0 * nmp_report_ratio(a, b);
}

/* A table cell: the percentage, or "-" where it is not a number. */
static void pct_cell(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, "<td class=\"num\">%.2f%%</td>", v);
	else
		fputs("<td class=\"num\">-</td>", f);
}

static const char style[] =
	"body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;"
	"color:#1d2330;padding:0 1em}h1{font-size:1.5em;margin-bottom:.2em}.sub{color:#5b6475;margin-top:0}"
	".cards{display:flex;gap:1em;flex-wrap:wrap;margin:1.2em 0}.card{background:#f3f5f9;border-radius:8px;"
	"padding:.7em 1.1em;min-width:9em}.card b{display:block;font-size:1.4em}"
	"table{border-collapse:collapse;width:100%;margin-top:1em}th,td{text-align:left;padding:.35em .6em;"
	"border-bottom:1px solid #e3e6ee;white-space:nowrap}th{background:#f3f5f9;position:sticky;top:0}"
	"td.num{text-align:right;font-variant-numeric:tabular-nums}tr.skip td{color:#8a92a3}"
	"td.reason{white-space:normal}.legend span{display:inline-block;width:.9em;height:.9em;"
	"margin:0 .3em 0 1em;vertical-align:-1px;border-radius:2px}svg{width:100%;height:auto;"
	"background:#fff;border:1px solid #e3e6ee;border-radius:8px}";

static void chart(FILE *f, const nmp_pass_result *r)
{
	const double W = 1060, H = 300, left = 48, right = 12, top = 16, bottom = 40;
	const double plot_w = W - left - right, plot_h = H - top - bottom;
	size_t n = r->n ? r->n : 1;
	double step = plot_w / (double)n, bar = step * 0.36;
	if (bar > 18)
		bar = 18;
	fprintf(f, "<svg viewBox=\"0 0 %.0f %.0f\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" "
		"aria-label=\"sparsity and kept magnitude per layer\">\n", W, H);
	for (int g = 0; g <= 4; g++) {
		double y = top + plot_h * (1.0 - g / 4.0);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e3e6ee\"/>"
			"<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6475\">%d%%</text>\n",
			left, y, W - right, y, left - 6, y + 4, g * 25);
	}
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		double x = left + step * ((double)i + 0.5);
		fputs("<g><title>", f);
		esc(f, w->choice->cand->name);
		if (w->done)
			fprintf(f, ": %s, sparsity %.1f%%, kept %.1f%% of L1", w->choice->pattern.text,
				100.0 - pct((double)w->stats.kept, (double)w->stats.numel),
				pct(w->stats.l1_kept, w->stats.l1_dense));
		else {
			fputs(": skipped, ", f);
			esc(f, w->choice->reason);
		}
		fputs("</title>", f);
		if (w->done) {
			double sp = 100.0 - pct((double)w->stats.kept, (double)w->stats.numel);
			double kp = pct(w->stats.l1_kept, w->stats.l1_dense);
			if (!isfinite(kp))
				kp = 0; /* no bar for a ratio that is not a number */
			fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#3b6fd8\"/>",
				x - bar, top + plot_h * (1 - sp / 100), bar, plot_h * sp / 100);
			fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f29a38\"/>",
				x, top + plot_h * (1 - kp / 100), bar, plot_h * kp / 100);
		} else {
			fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#c5cad6\" "
				"fill-opacity=\"0.45\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"13\" text-anchor=\"middle\" "
				"fill=\"#8a92a3\">&#215;</text>", x - bar, top, 2 * bar, plot_h, x, top + plot_h - 4);
		}
		if (r->n <= 64 || i % ((r->n + 63) / 64) == 0)
			fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\" fill=\"#5b6475\">%zu</text>",
				x, top + plot_h + 14, i + 1);
		fputs("</g>\n", f);
	}
	fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\" fill=\"#5b6475\">"
		"layer, in graph order (hover for details)</text>\n</svg>\n", left + plot_w / 2, H - 8);
}

void nmp_report_html(FILE *f, const nmp_plan *p, const nmp_pass_result *r, bool dry_run)
{
	size_t skipped = r->n - r->n_done;
	fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
	      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>nmprune report: ", f);
	esc(f, p->model->path);
	fprintf(f, "</title><style>%s</style></head><body>\n<h1>nmprune report</h1><p class=\"sub\">", style);
	esc(f, p->model->path);
	fprintf(f, " &middot; pattern %s &middot; nmprune %s%s</p>\n", p->sel->default_pattern, NMP_VERSION,
		dry_run ? " &middot; dry run" : "");
	fprintf(f, "<div class=\"cards\"><div class=\"card\"><b>%zu</b>weights %s</div><div class=\"card\"><b>%zu</b>"
		"skipped</div><div class=\"card\"><b>%.2f%%</b>of %llu parameters in candidate weights zeroed</div>"
		"<div class=\"card\"><b>%.3f s</b>elapsed</div></div>\n", r->n_done, dry_run ? "to prune" : "pruned",
		skipped, r->params_total ? pct((double)r->params_zeroed, (double)r->params_total) : 0.0,
		(unsigned long long)r->params_total, r->seconds);
	fputs("<p class=\"legend\"><span style=\"background:#3b6fd8\"></span>sparsity"
	      "<span style=\"background:#f29a38\"></span>kept magnitude (% of dense L1)"
	      "<span style=\"background:#c5cad6\"></span>skipped</p>\n", f);
	chart(f, r);
	fputs("<table><thead><tr><th>#</th><th>weight</th><th>op</th><th>shape</th><th>pattern</th>"
	      "<th>sparsity</th><th>kept L1</th><th>vs unstructured</th><th>status</th></tr></thead><tbody>\n", f);
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		const nmp_candidate *c = w->choice->cand;
		char shape[96];
		nmp_report_shape(c->tensor, shape, sizeof shape);
		fprintf(f, "<tr%s><td class=\"num\">%zu</td><td>", w->done ? "" : " class=\"skip\"", i + 1);
		esc(f, c->name);
		fputs("</td><td>", f);
		esc(f, c->n_uses ? c->uses[0].op : "-");
		fprintf(f, "</td><td>%s</td><td>%s</td>", shape, w->choice->pattern.text);
		if (w->done) {
			const nmp_mask_stats *st = &w->stats;
			pct_cell(f, 100.0 - pct((double)st->kept, (double)st->numel));
			pct_cell(f, pct(st->l1_kept, st->l1_dense));
			pct_cell(f, pct(st->l1_kept, st->l1_unstructured));
			fputs("<td>pruned</td></tr>\n", f);
		} else {
			fputs("<td></td><td></td><td></td><td class=\"reason\">skipped: ", f);
			esc(f, w->choice->reason);
			fputs("</td></tr>\n", f);
		}
	}
	fputs("</tbody></table>\n</body></html>\n", f);
}
