"""Instance polygons from a class-probability raster, block by block, merged across block seams.

Algorithm (per foreground class ``k``; not background 0, not the boundary class):

* object pixels ``O_k``: ``argmax == k`` and ``p_k >= threshold`` (nodata pixels never count);
* without a boundary class, instances are the 4-connected components of ``O_k``;
* with a boundary class ``b``, confident cores ``O_k & (p_b < core_boundary_max)`` are labelled by
  4-connected components and flooded over ``O_k | (argmax == b)`` by :func:`grow_markers`, a
  marker-controlled watershed on the geodesic distance to the cores, so touching objects
  separated by boundary pixels become separate instances and boundary pixels go to the nearest
  object. (A priority-queue watershed such as :func:`skimage.segmentation.watershed` breaks ties
  by queue age, which depends on pixels far away, so two haloed blocks could disagree at their
  seam; the geodesic flooding depends only on nearby markers and agrees exactly.) An object
  component without any core becomes its own marker (nothing is lost when the network is unsure).

Blocks: each ``block_size`` block is labelled on its window grown by a halo. Labels are made
global with a union-find over the overlaps of neighbouring haloed windows: two markers that share
a pixel in an overlap are the same connected core (cores are a per-pixel criterion, so this gives
exactly the global connected components of the cores), and a core-less (fallback) region is
joined with whatever region its pixels belong to in the neighbour. Each block polygonizes only
its own interior (:func:`geoseg.polygonize.label_polygons`: GDAL's 4-connected, pixel-exact
polygons, holes kept, computed in numpy) in *global pixel coordinates* (integers, exact), and the
parts of one global instance are unioned, so an object crossing a seam comes out as one polygon
whatever the block size.

Threads: reading, labelling and polygonizing a block needs no other block, so blocks are read
and labelled on ``workers`` threads (one dataset handle each; GDAL, numpy, scipy and shapely
release the GIL for most of it), at most ``workers`` ahead; merging them into the stream stays serial, in row order, so
the output does not depend on ``workers``.

Streaming: unions are graph edges; at the end of each block row the connected components of the
nodes so far are the objects. An object none of whose nodes occurs in the overlaps kept for the
next block row can no longer change: it is merged, post-processed (hole filling, the pixel-space
min-area pre-filter, canonical rings, simplification or regularisation, georeferencing, true area
(pixel area x the true area of a pixel at the centroid, :func:`geoseg.grid.pixel_areas_m2`), the
m² filter, all per object) and appended to a temporary GeoPackage (one append per block row,
then the style and an atomic rename). Only the nodes in those overlaps are kept, renumbered, with
the score totals and polygon parts of their unfinished objects. Objects of ``regularize`` classes
wait until every object within reach of the regulariser (``2 x 2 px`` of movement + 1 px) is
finished too, since neighbours are regularised together (so they never overlap).

Output order (documented, the same for every block size): by the bottom edge of the object's raw
pixel outline (the pixel row its last pixel is on; top of the scene first), then class id, left,
top and right edge, pixel area and centroid. An object is written once no unfinished or later
object can sort before it.

Memory: O(C * (block_size + 2 * halo)^2) per block in flight (``workers + 1`` blocks), plus
O(width * (block_size + halo)) for the objects and overlap bands of one block row, plus the
objects crossing the next seam, plus (only with ``regularize``) clusters of regularised objects
closer than ~5 px to each other. Independent of the number of objects and of the scene height.
GDAL's block cache is limited to ``workers + 2`` haloed blocks while vectorizing (the halo rows
shared with the next block row are decoded again instead of caching a block row). Finished objects
are merged and post-processed 4096 at a time.

Modules: :mod:`geoseg.instances` (the pure labelling rule, shared with train/calibrate),
:mod:`.blocks` (block layout, the per-block step), :mod:`.stream` (the union-find state between
block rows, release in output order), :mod:`.objects` (per-object post-processing),
:mod:`.writer` (the GeoPackage), :mod:`.metadata` (class metadata of an existing prediction),
:mod:`.stage` (``vectorize_prediction`` and the ``geoseg vectorize`` stage).
"""

from geoseg.grid import geodesic_areas_m2
from geoseg.instances import BlockLabels, grow_markers, label_instances
from geoseg.vectorize.metadata import read_prediction_classes
from geoseg.vectorize.objects import REGULARIZE_SHIFT_PX, fill_small_holes, pixel_area_m2
from geoseg.vectorize.stage import VectorizeConfig, regularize_class_ids, run, vectorize_prediction
from geoseg.vectorize.writer import GPKG_OPTIONS, LAYER, write_instances

__all__ = [
    "GPKG_OPTIONS",
    "LAYER",
    "REGULARIZE_SHIFT_PX",
    "BlockLabels",
    "VectorizeConfig",
    "fill_small_holes",
    "geodesic_areas_m2",
    "grow_markers",
    "label_instances",
    "pixel_area_m2",
    "read_prediction_classes",
    "regularize_class_ids",
    "run",
    "vectorize_prediction",
    "write_instances",
]
