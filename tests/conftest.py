"""Helpers shared by the test modules (imported as ``from conftest import ...``; no test module imports another).

* :func:`random_net`: random small Flax ReLU networks for conversion tests (conv blocks with 3x3 / 1x1 kernels,
  strides, SAME / VALID padding, BatchNorm with non-trivial running statistics, optional residual blocks, average or
  max pooling, flatten or global pooling, optional hidden Dense);
* :func:`residual_setup`: one residual conv net with max pooling and its thresholds;
* :func:`dyadic_two_layer`: a two-layer dense net whose inputs, weights and thresholds are dyadic (every current
  exact in float32), with its first layer's current;
* :func:`numpy_neuron_run`: an independent float64 re-statement of IF / SNM neurons with initial potentials;
* :func:`killed_after` (a stream that stops with :class:`Killed`, as a kill would), :func:`rel_error`, :func:`count_compiles`, :func:`init_params`, :class:`Tiny`, :data:`ROOT`;
* :data:`SLOW`: the tests of the slow tier (``pytest -m "not slow"`` is the fast tier), marked at collection.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from typing import Sequence

import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxsnn

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ---- the two tiers ------------------------------------------------------------------------------------------------
# The slow tier: a whole file, a test function (every parametrization) or one parametrization, by file name. Chosen
# from one `pytest --durations` run of the whole suite on the 2-core machine (2026-12-07), taken while other jobs
# loaded it (load average 8-10: wall times there were ~3-4x an idle machine's): every test over ~6 s there, except one
# cheap parametrization kept in the fast tier where a family checks a central property (the two schedules
# bit-identical, a scan over step = simulate, surrogates leave the forward spikes alone). Seconds are that run's.
# Then, from a run of the fast tier alone, the tests over ~4 s there (below).
# A test module may also mark its own tests (pytest.mark.slow); tests/test_tiers.py checks every entry names a test.
SLOW = (
    "test_batch_job.py",  # 85 s: two-process and killed batch jobs (subprocesses)
    "test_main_job.py",  # 113 s: experiments/main.py runs and resumes (subprocesses)
    "test_notebook.py::test_notebook_runs_top_to_bottom",  # 396 s: the walkthrough on the real Fashion-MNIST
    "test_parallel.py",  # 71 s: four fake devices in a subprocess
    "test_batches.py::test_every_streaming_function_reads_every_form_and_a_mask_really_masks[tune_snn]",  # 34 s
    "test_convert.py::test_input_only_nonlinearity_concat_pad_and_slices_convert",  # 7 s
    "test_encoders.py::test_simulate_is_a_loop_over_step_with_the_frames_in_both_schedules",  # 16-21 s
    "test_encoders.py::test_poisson_is_deterministic_given_the_key",  # 15-16 s each
    "test_encoders.py::test_a_non_finite_input_reads_out_nan_whatever_the_code",  # 8 s
    "test_lowlatency.py::test_calibrate_snn_errors",  # 17 s
    "test_lowlatency.py::test_calibrate_snn_reduces_the_mean_error_at_small_T_using_only_its_batches",  # 8-20 s
    "test_lowlatency.py::test_choose_readout_delay_picks_the_delay_that_agrees_most_with_the_ann",  # 42 s
    "test_lowlatency.py::test_descend_thresholds_lowers_the_relaxed_error",  # 11 s
    "test_lowlatency.py::test_descended_thresholds_beat_neuron_norm_on_the_relaxed_error_at_T",  # 27 s
    "test_lowlatency.py::test_finetune_cycles_its_batches_in_epochs_and_says_so",  # 18 s
    "test_lowlatency.py::test_finetune_fits_the_labels_through_the_snn_and_keeps_the_best_on_validation",  # 29 s
    "test_lowlatency.py::test_finetune_resumes_from_its_checkpoint_exactly",  # 21 s
    "test_lowlatency.py::test_ratio_histograms_and_thresholds_for_steps_on_a_network",  # 11 s
    "test_lowlatency.py::test_tune_snn_lowers_the_distance_to_the_ann_and_changes_only_data",  # 21 s
    "test_lowlatency.py::test_tune_snn_resumes_from_its_checkpoint_exactly",  # 34 s
    "test_misuse.py::test_numbers_depend_on_the_examples_not_on_how_they_are_cut_padded_or_masked",  # 10 s
    "test_model_styles.py::test_a_final_softmax_is_dropped_and_said_and_the_snn_reads_out_the_logits",  # 4-15 s each
    "test_model_styles.py::test_bfloat16_network_with_max_pooling_converges_to_t_1024",  # 21 s
    "test_model_styles.py::test_equinox_module_as_variables_converges_and_sites_keep_the_module_path",  # 8 s
    "test_model_styles.py::test_errors_name_the_nnx_and_equinox_module_and_gelu_gets_its_own_hint",  # 6 s
    "test_model_styles.py::test_flax_nnx_converges_and_sites_keep_the_module_path",  # 6 s
    "test_models.py::test_conv_im2col_grad_matches_lax",  # 12-16 s each
    "test_models.py::test_fast_conv_model_has_same_variables_and_gradients",  # 12 s
    "test_models.py::test_forward_shapes_and_batchnorm_modes[vgg11-shape1]",  # 6-7 s each; small_cnn stays
    "test_models.py::test_forward_shapes_and_batchnorm_modes[vgg16-shape2]",
    "test_models.py::test_forward_shapes_and_batchnorm_modes[resnet20-shape3]",
    "test_models.py::test_forward_shapes_and_batchnorm_modes[resnet18-shape4]",
    "test_models.py::test_models_convert_and_converge",  # 14-31 s each
    "test_qcfs.py::test_one_qcfs_layer_converted_with_half_threshold_start_is_exact_at_T_equal_L[4-1.0-neuron0]",
    "test_qcfs.py::test_qcfs_net_with_residual_blocks_and_avg_pools_converges_as_T_grows",  # 25 s
    "test_quantize.py::test_few_steps_runs_every_stage_and_reports_validation_and_time",  # 11 s
    "test_readme.py::test_differentiable_simulation_block_runs_as_written",  # 15 s
    "test_readme.py::test_every_model_style_block_runs_as_written_and_converges",  # 13 s
    "test_readme.py::test_quick_start_runs_as_written",  # 24 s
    "test_recipes.py::test_every_low_latency_tool_can_be_switched_off",  # 12 s
    "test_recipes.py::test_low_latency_is_the_documented_stack_of_stages",  # 11 s
    "test_recipes.py::test_qcfs_recipe_takes_the_trained_lambda_and_calibrates_at_T",  # 11 s
    "test_recording.py::test_step_records_what_simulate_records_and_the_potential_is_the_states_v",  # 11 s
    "test_recording.py::test_both_schedules_record_the_same_bits[neuron0-membrane-4]",  # 7 s
    "test_recording.py::test_both_schedules_record_the_same_bits[neuron1-spike-5]",  # 7 s
    "test_recording.py::test_both_schedules_record_the_same_bits[neuron1-spike-4]",  # 7 s
    "test_serialization.py::test_saved_networks_simulate_bit_for_bit_the_same_in_a_fresh_process_without_their_code",
    # ^ 19 s: two recipes, three networks simulated in both schedules, and a fresh process loading them
    "test_simulate.py::test_bfloat16_network_keeps_float32_state_converges_and_matches_float32_spikes",  # 61 s
    "test_simulate.py::test_evaluate_resumes_from_its_checkpoint_to_the_uninterrupted_result",  # 9 s
    "test_simulate.py::test_evaluate_streams_batches_and_counts_only_masked_examples",  # 17 s
    "test_simulate.py::test_first_site_spike_counts_match_a_direct_neuron_run",  # 7 s
    "test_simulate.py::test_folded_simulation_equals_the_unfolded_one_to_rounding_and_runs_fewer_ops",  # 7 s
    "test_simulate.py::test_narrow_counters_count_past_their_int8_range_exactly[127]",  # 14 s
    "test_simulate.py::test_non_finite_inputs_read_out_nan_and_count_as_wrong",  # 19 s
    # 10 of the 12 random architectures (5-23 s each); 3 and 8 stay
    *(f"test_simulate.py::test_random_architectures_converge_to_the_ann[{i}]" for i in (0, 1, 2, 4, 5, 6, 7, 9, 10, 11)),
    "test_simulate.py::test_readout_delay_against_numpy_and_schedules_bit_identical",  # 11-13 s each
    "test_simulate.py::test_recorded_counts_equal_shorter_runs",  # 6-13 s each
    "test_simulate.py::test_schedules_stay_bit_identical_with_potentials_and_offsets",  # 13-14 s each
    "test_simulate.py::test_schedules_stay_bit_identical_with_sums_before_the_readout[membrane-False]",  # 7 s
    "test_simulate.py::test_schedules_stay_bit_identical_with_sums_before_the_readout[spike-False]",  # 5 s
    "test_simulate.py::test_schedules_stay_bit_identical_with_sums_before_the_readout[membrane-True]",  # 5 s
    "test_simulate.py::test_small_convolutions_run_as_matmuls_and_give_the_same_spikes",  # 28 s
    "test_simulate.py::test_spike_readout_converges_to_relu_of_logits",  # 9 s
    "test_simulate.py::test_step_major_equals_layer_major_bit_for_bit",  # 21-47 s each
    # the strict mkdocs build of the whole site (the module fixture `site`: ~15 s) and the tests that read it
    "test_site.py::test_every_public_name_has_an_api_entry",
    "test_site.py::test_the_api_check_sees_a_missing_entry",
    "test_site.py::test_pages_are_offline_and_show_their_figures",
    "test_site.py::test_the_notebook_is_rendered_with_its_committed_outputs",
    *(f"test_site.py::test_every_python_block_of_the_page_runs[guides/{page}.md]"  # 7-49 s each
      for page in ("analysis", "converting", "differentiable", "extending", "low-latency", "models-data-training",
                   "paper", "qcfs", "step", "batch-jobs", "performance")),
    "test_step.py::test_a_scan_over_step_is_simulate_bit_for_bit[neuron0-membrane]",  # 6-8 s each; neuron2 stays
    "test_step.py::test_a_scan_over_step_is_simulate_bit_for_bit[neuron1-spike]",
    "test_step.py::test_a_scan_over_step_is_simulate_bit_for_bit[neuron3-spike]",
    "test_step.py::test_a_scan_over_step_is_simulate_bit_for_bit[neuron4-membrane]",
    "test_step.py::test_a_scan_over_step_is_simulate_bit_for_bit[neuron5-spike]",
    "test_step.py::test_step_in_a_python_loop_and_under_vmap_agrees_with_simulate",  # 9 s
    "test_surrogates.py::test_differentiating_spikes_without_a_surrogate_is_an_error_and_the_analog_part_is_fine",
    *(f"test_surrogates.py::test_forward_spikes_are_bit_identical_with_every_surrogate[{p}]"  # 7-13 s; None-3 stays
      for p in ("None-0", "None-1", "None-2", "3-0", "3-1", "3-2", "3-3")),
    "test_surrogates.py::test_relaxed_model_gradients_match_finite_differences_for_every_input",  # 21 s each
    "test_surrogates.py::test_remat_gives_the_same_gradients_with_less_memory",  # 13 s
    "test_surrogates.py::test_surrogate_gradient_equals_the_straight_through_restatement",  # 30 s
    "test_surrogates.py::test_surrogate_derivatives_have_unit_area_and_their_steps_integrate_them",  # 8 s
    "test_training.py::test_the_small_config_trains_through_tfds",  # 23 s (measured alone)
    "test_training.py::test_train_and_evaluate_reads_the_configs_data_through_tfds",  # 12 s (measured alone)
    "test_xla.py::test_jaxsnns_computations_get_the_fast_kernels_whoever_calls_them",  # 27 s idle
    # Over ~4 s in a run of the fast tier itself (same day, same load), which these leave at about half its time:
    "test_analysis.py::test_conversion_error_against_numpy_and_it_shrinks_with_T",  # 5 s
    "test_calibration.py::test_thresholds_of_every_norm_have_the_sites_shapes[3]",  # 4 s
    "test_convert.py::test_layer_norm_and_clip_on_the_input_are_computed_once_and_where_is_a_relu",  # 4 s
    "test_encoders.py::test_rate_coding_converges_to_the_direct_input_answers_as_t_grows",  # 4 s
    "test_encoders.py::test_encoder_errors",  # 13 s (in the second run of the fast tier)
    "test_lowlatency.py::test_finetune_and_tune_snn_compile_once_per_network_not_per_call",  # 23 s
    "test_misuse.py::test_tune_snn_refuses_non_finite_inputs_and_stops_on_a_diverging_loss",  # 5 s
    "test_quantize.py::test_fine_tuning_resumes_bit_for_bit_after_a_kill",  # 11 s
    "test_quantize.py::test_weights_and_lambda_train_and_batchnorm_statistics_stay",  # 5 s
    *(f"test_quantize.py::test_every_model_style_quantizes_converts_and_keeps_its_module_paths[{style}]"  # 4-6 s
      for style in ("linen", "plain", "equinox")),  # nnx stays
    "test_recording.py::test_both_schedules_record_the_same_bits[neuron0-membrane-5]",  # 9 s
    "test_recording.py::test_both_schedules_record_the_same_bits[neuron1-spike-12]",  # 6 s
    "test_recording.py::test_the_plots_draw_the_recorded_spikes_and_potentials",  # 5 s
    "test_recording.py::test_recording_some_sites_changes_no_other_result",  # 4 s
    "test_simulate.py::test_inexact_layer_major_agrees_to_float_rounding",  # 5 s
    "test_training.py::test_max_steps_stops_a_run_that_then_resumes_to_the_same_bits",  # 5 s (the kill test stays)
    "test_xla.py::test_importing_jaxsnn_or_the_experiments_changes_nothing_and_the_scripts_opt_in_by_default",  # 5 s
)


def slow_entry_matches(entry: str, nodeid: str) -> bool:
  """Whether a :data:`SLOW` entry (``file``, ``file::test`` or ``file::test[params]``) names a collected test."""
  path, _, name = nodeid.partition("::")
  file, _, test = entry.partition("::")
  if pathlib.PurePosixPath(path).name != file:
    return False
  return not test or name == test or ("[" not in test and name.split("[", 1)[0] == test)


def pytest_collection_modifyitems(config, items):
  for item in items:
    if any(slow_entry_matches(entry, item.nodeid) for entry in SLOW):
      item.add_marker(pytest.mark.slow)


def rel_error(out, ann) -> float:
  """Max absolute error relative to the ANN's largest magnitude."""
  return float(jnp.abs(out - ann).max() / jnp.abs(ann).max())


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations (jax.monitoring's backend compile events) inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def init_params(model, x, seed):
  """Random variables of the model's shapes, drawn in numpy (no compilation: keeps the tests fast)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype), shapes)


class Tiny(nn.Module):
  """Dense(8) - ReLU - Dense(3)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


# ---- random architectures ------------------------------------------------------------------------------------------
class Residual(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.features, (3, 3))(x)))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(self.features, (3, 3))(y))
    return nn.relu(x + y)


class RandomNet(nn.Module):
  blocks: Sequence[tuple]  # (features, kernel, stride, padding, residual, pool)
  head: str  # "flatten" or "gap"
  hidden: int  # 0 for none
  classes: int

  @nn.compact
  def __call__(self, x):
    for features, kernel, stride, padding, residual, pool in self.blocks:
      x = nn.Conv(features, (kernel, kernel), strides=stride, padding=padding)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
      if residual:
        x = Residual(features)(x)
      if pool == "avg":
        x = nn.avg_pool(x, (2, 2), (2, 2))
      elif pool == "max":
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.mean(axis=(1, 2)) if self.head == "gap" else x.reshape(x.shape[0], -1)
    if self.hidden:
      x = jax.nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def random_net(seed: int, *, allow_max_pool: bool = False):
  """Returns (apply_fn, variables, inputs) for a random architecture with randomised BatchNorm statistics."""
  rng = np.random.default_rng(seed)
  size = int(rng.choice([6, 8]))
  blocks = []
  for _ in range(int(rng.integers(1, 4))):
    pools = ["none", "avg"] + (["max"] if allow_max_pool else [])
    pool = str(rng.choice(pools)) if size >= 4 else "none"
    stride = int(rng.choice([1, 2])) if size >= 6 and pool == "none" else 1
    kernel = int(rng.choice([1, 3]))
    padding = str(rng.choice(["SAME", "VALID"])) if kernel == 3 and size >= 6 else "SAME"
    blocks.append((int(rng.choice([4, 6, 8])), kernel, stride, padding, bool(rng.random() < 0.4), pool))
    if padding == "VALID":
      size -= 2
    size = -(-size // stride)
    if pool != "none":
      size //= 2
  model = RandomNet(tuple(blocks), head=str(rng.choice(["flatten", "gap"])),
                    hidden=int(rng.choice([0, 16])), classes=int(rng.choice([3, 5])))
  channels = int(rng.choice([1, 3]))
  key = jax.random.PRNGKey(seed)
  x = jax.random.normal(key, (8, 8, 8, channels))
  variables = model.init(jax.random.PRNGKey(seed + 1000), x)
  variables = randomise_batch_stats(variables, rng)
  apply_fn = functools.partial(_apply, model)
  return apply_fn, variables, x


def _apply(model, variables, x):
  return model.apply(variables, x)


def randomise_batch_stats(variables, rng):
  """Non-trivial BatchNorm statistics and affine parameters (means, variances, scales, offsets)."""

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'mean'" in name:
      return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.3, 2.0, leaf.shape), leaf.dtype)
    if "BatchNorm" in name and "'scale'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if "BatchNorm" in name and "'bias'" in name:
      return jnp.asarray(rng.normal(0.1, 0.2, leaf.shape), leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


class ResidualConvNet(nn.Module):
  """Convs with BatchNorm, a residual block, max and average pooling, dense layers."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(x)))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(6, (3, 3))(y))
    x = nn.relu(x + y)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(12)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@functools.cache
def residual_setup():
  """(apply_fn, variables, x, thresholds) of :class:`ResidualConvNet` on 5 random 8x8x3 inputs."""
  model = ResidualConvNet()
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 3))
  variables = randomise_batch_stats(model.init(jax.random.PRNGKey(1), x), np.random.default_rng(0))
  th = jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x]))
  return model.apply, variables, x, th


# ---- exact references -----------------------------------------------------------------------------------------------
def numpy_neuron_run(kind, currents, threshold, v0, steps):
  """Independent re-statement of IF / SNM with an initial potential, in float64 (exact on dyadic values): the
  neuron's input is the same current every step. Returns (positive counts, negative counts, summed spikes)."""
  v = np.broadcast_to(np.asarray(v0, np.float64), currents.shape).copy()
  m = np.zeros(currents.shape, np.int64)
  pos = np.zeros(currents.shape, np.int64)
  neg = np.zeros(currents.shape, np.int64)
  out = np.zeros(currents.shape)
  for _ in range(steps):
    v = v + currents
    p = (threshold > 0) & (v >= threshold)
    n = (threshold > 0) & (v <= -threshold) & (m > 0) if kind == "SNM" else np.zeros_like(p)
    s = np.where(p, threshold, np.where(n, -threshold, 0.0))
    v, m = v - s, m + p - n
    pos, neg, out = pos + p, neg + n, out + s
  return pos, neg, out


def dyadic_two_layer(seed=0):
  """``(apply_fn, (w1, b1, w2), x, thresholds, first-layer current)``: every value dyadic, every current exact."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(-8, 9, (6, 4)) / 4, jnp.float32)
  w1 = jnp.asarray(rng.integers(-8, 9, (4, 5)) / 8, jnp.float32)
  b1 = jnp.asarray(rng.integers(-4, 5, (5,)) / 8, jnp.float32)
  w2 = jnp.asarray(rng.integers(-8, 9, (5, 3)) / 8, jnp.float32)
  th = {"relu": jnp.asarray(rng.integers(1, 9, (5,)) / 4, jnp.float32)}
  apply_fn = lambda v, x: jax.nn.relu(x @ v[0] + v[1]) @ v[2]  # noqa: E731
  return apply_fn, (w1, b1, w2), x, th, np.asarray(x @ w1 + b1, np.float64)


class Killed(Exception):
  """What :func:`killed_after` raises: a job killed in the middle of its stream."""


def killed_after(items, n: int):
  """Yields the first ``n`` of ``items``, then raises :class:`Killed` (a job killed while it reads its batches)."""
  for i, item in enumerate(items):
    if i == n:
      raise Killed
    yield item
