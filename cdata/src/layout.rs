//! The array tree a schema's arrays must have: a plan built once per schema, with every
//! node's buffers from arrow-rs's layouts, that checks each array before anything reads it.
//!
//! As in nanoarrow's `ArrowArrayViewInitFromSchema`, the tree follows the C schema: a node
//! has the schema node's children and dictionary. Buffer counts come from
//! [`arrow_data::layout`], the Columnar format's layouts, plus the C Data Interface's own
//! rules: a validity buffer wherever the layout may hold one (so not for the null type,
//! unions or run-end encoded arrays), and for view types the variadic data buffers and
//! then one buffer of their sizes.

use std::ffi::c_void;

use arrow_data::{BufferSpec, DataTypeLayout};
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{DataType, Schema, UnionMode};

use crate::abi::ArrowArray;

/// The plan of one schema's array tree; its last node is the root.
#[derive(Debug)]
pub struct Plan {
    nodes: Box<[Node]>,
    /// Each node's children, as indices into `nodes`, one run per node.
    child_ids: Box<[usize]>,
    /// The root's columns, when every one is flat.
    flat_columns: Option<Box<[Flat]>>,
    /// A node has a dictionary.
    has_dictionary: bool,
}

#[derive(Debug)]
struct Node {
    /// For messages: the field's name (empty for the root) and type.
    name: String,
    data_type: DataType,
    /// The buffers an array has; more may follow when `variadic`.
    buffers: i64,
    variadic: bool,
    /// This node's run in `child_ids`.
    first_child: usize,
    children: usize,
    dictionary: Option<usize>,
    /// A child holds a row for each of this node's (a struct, a sparse union).
    children_span_rows: bool,
    flat: Option<Flat>,
}

/// The buffers of a column with no children and no dictionary, whose lengths follow from
/// its length, offset and last offset: what arrow-rs's import makes of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flat {
    /// No buffers: the null type.
    Nothing,
    /// A validity bitmap and a bitmap of values.
    Bits,
    /// A validity bitmap and values of this many bytes each.
    Fixed(u64),
    /// A validity bitmap, offsets of this many bytes each, and the values they delimit.
    Offsets(u64),
}

impl Plan {
    /// The plan for arrays of `root`'s type, from `root`'s tree.
    pub fn new(root: &FFI_ArrowSchema) -> Result<Self, String> {
        let mut builder = Builder::default();
        builder.add(root)?;
        let root_node = builder.nodes.last().expect("the root was added");
        let columns = &builder.child_ids[root_node.first_child..][..root_node.children];
        let flat_columns = columns
            .iter()
            .map(|&id| builder.nodes[id].flat)
            .collect::<Option<Box<[Flat]>>>();
        let has_dictionary = builder.nodes.iter().any(|node| node.dictionary.is_some());
        Ok(Self {
            nodes: builder.nodes.into_boxed_slice(),
            child_ids: builder.child_ids.into_boxed_slice(),
            flat_columns,
            has_dictionary,
        })
    }

    /// The plan for the struct arrays that hold `schema`'s rows.
    pub fn for_rows(schema: &Schema) -> Result<Self, String> {
        let exported = FFI_ArrowSchema::try_from(schema).map_err(|err| err.to_string())?;
        Self::new(&exported)
    }

    /// Whether an array of the plan has a dictionary, at any depth.
    pub fn has_dictionary(&self) -> bool {
        self.has_dictionary
    }

    #[inline]
    fn root(&self) -> &Node {
        self.nodes.last().expect("a plan has a root")
    }

    #[inline]
    fn children(&self, node: &Node) -> impl Iterator<Item = &Node> {
        self.child_ids[node.first_child..node.first_child + node.children]
            .iter()
            .map(|&id| &self.nodes[id])
    }

    /// Check that `array` has the buffers, children and dictionary the plan gives it, with
    /// lengths and offsets that are not negative, and children long enough for their
    /// parent. Allocates nothing unless it fails: it runs on every batch.
    ///
    /// # Safety
    /// `array` is an unreleased array: its pointers are NULL or valid for their counts.
    #[inline]
    pub unsafe fn check(&self, array: &ArrowArray) -> Result<(), String> {
        // SAFETY: as the caller promised.
        unsafe { self.check_node(array, self.root()) }
    }

    /// # Safety
    /// As for [`check`](Self::check).
    unsafe fn check_node(&self, array: &ArrowArray, node: &Node) -> Result<(), String> {
        let data_type = &node.data_type;
        if array.release.is_none() {
            return Err("it is released".into());
        }
        if array.length < 0 || array.offset < 0 || array.null_count < -1 {
            return Err(format!(
                "it ({data_type}) has length {}, offset {} and null count {}",
                array.length, array.offset, array.null_count
            ));
        }
        let expected = node.buffers;
        let buffers_ok = if node.variadic {
            array.n_buffers > expected
        } else {
            array.n_buffers == expected
        };
        if !buffers_ok {
            return Err(format!(
                "it ({data_type}) has {} buffers where its type has {expected}{}",
                array.n_buffers,
                if node.variadic { " and more" } else { "" }
            ));
        }
        if array.n_buffers > 0 && array.buffers.is_null() {
            return Err(format!("it ({data_type}) has a NULL buffer list"));
        }
        let children = node.children;
        if array.n_children != children as i64 {
            return Err(format!(
                "it ({data_type}) has {} children where its type has {children}",
                array.n_children
            ));
        }
        if children > 0 && array.children.is_null() {
            return Err(format!("it ({data_type}) has a NULL child list"));
        }
        let rows = node.children_span_rows.then(|| array.offset + array.length);
        for (index, child_node) in self.children(node).enumerate() {
            let in_child = |problem: String| format!("its child {:?}: {problem}", child_node.name);
            // SAFETY: the child list holds `n_children` pointers (checked above).
            let Some(child) = (unsafe { (*array.children.add(index)).as_ref() }) else {
                return Err(in_child("it is NULL".into()));
            };
            // SAFETY: a child of an unreleased array is valid to read.
            unsafe { self.check_node(child, child_node) }.map_err(in_child)?;
            if let Some(rows) = rows.filter(|&rows| child.length < rows) {
                return Err(in_child(format!(
                    "it has {} rows where its parent needs {rows}",
                    child.length
                )));
            }
        }
        // SAFETY: an unreleased array's dictionary is NULL or valid.
        match (node.dictionary, unsafe { array.dictionary.as_ref() }) {
            (Some(values), Some(dictionary)) => {
                // SAFETY: as above.
                unsafe { self.check_node(dictionary, &self.nodes[values]) }
                    .map_err(|problem| format!("its dictionary: {problem}"))
            }
            (Some(_), None) => Err(format!("it ({data_type}) has no dictionary")),
            (None, Some(_)) => Err(format!(
                "it ({data_type}) has a dictionary but its type is not dictionary-encoded"
            )),
            (None, None) => Ok(()),
        }
    }

    /// (start, bytes) of every buffer of `root`, a struct array of the plan's type, when
    /// its columns are all flat and it has no nulls of its own: each as long as arrow-rs's
    /// import makes it; `None` otherwise. An empty validity bitmap is left out, as arrow-rs
    /// drops it. Fails on offsets that arrow-rs's validation would refuse.
    ///
    /// # Safety
    /// `root` is an unreleased array that [`check`](Self::check) accepted.
    pub unsafe fn flat_buffers(
        &self,
        root: &ArrowArray,
    ) -> Result<Option<Vec<(usize, u64)>>, String> {
        let Some(columns) = self.flat_columns.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        // SAFETY: a struct array has one buffer, its validity bitmap (checked).
        if !unsafe { *root.buffers }.is_null() && root.null_count != 0 {
            return Ok(None);
        }
        // SAFETY: `check` found one valid child per column.
        let column = |index: usize| unsafe { &**root.children.add(index) };
        // Sized for every buffer a column can have, so that the list is rarely shrunk.
        let most = (0..columns.len())
            .map(|index| {
                let column = column(index);
                let values = column.n_buffers.max(1) as usize - 1;
                values + usize::from(column.null_count != 0)
            })
            .sum();
        let mut found = Vec::with_capacity(most);
        for (index, &flat) in columns.iter().enumerate() {
            // SAFETY: `check` accepted the column for this node.
            unsafe { column_buffers(column(index), flat, &mut found) }.map_err(|problem| {
                let name = &self
                    .children(self.root())
                    .nth(index)
                    .expect("a column")
                    .name;
                format!("its child {name:?}: {problem}")
            })?;
        }
        Ok(Some(found))
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    child_ids: Vec<usize>,
}

impl Builder {
    /// Add `schema`'s node after everything below it; returns its index.
    fn add(&mut self, schema: &FFI_ArrowSchema) -> Result<usize, String> {
        let data_type = DataType::try_from(schema).map_err(|err| err.to_string())?;
        let children = schema
            .children()
            .map(|child| self.add(child))
            .collect::<Result<Vec<_>, _>>()?;
        let dictionary = schema.dictionary().map(|d| self.add(d)).transpose()?;
        let layout = layout(&data_type)?;
        let flat = match (children.is_empty() && dictionary.is_none(), &layout) {
            (
                true,
                DataTypeLayout {
                    variadic: false, ..
                },
            ) => flat(&layout),
            _ => None,
        };
        let node = Node {
            name: schema.name().unwrap_or_default().to_owned(),
            buffers: layout.buffers.len() as i64 + i64::from(layout.can_contain_null_mask),
            variadic: layout.variadic,
            first_child: self.child_ids.len(),
            children: children.len(),
            dictionary,
            children_span_rows: matches!(
                data_type,
                DataType::Struct(_) | DataType::Union(_, UnionMode::Sparse)
            ),
            flat,
            data_type,
        };
        self.child_ids.extend(children);
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }
}

/// arrow-rs's layout of `data_type`, or an error naming a type it has none for.
fn layout(data_type: &DataType) -> Result<DataTypeLayout, String> {
    let storage = match data_type {
        DataType::Dictionary(keys, _) => keys,
        other => other,
    };
    // arrow-rs's `layout` panics on a negative width, which a C schema can carry ("w:-1").
    if matches!(storage, DataType::FixedSizeBinary(width) if *width < 0) {
        return Err(format!(
            "the type {data_type} has no layout: its width is negative"
        ));
    }
    let layout = arrow_data::layout(data_type);
    if layout.buffers.contains(&BufferSpec::AlwaysNull) {
        return Err(format!(
            "the type {data_type} has a layout this library does not know: {layout:?}"
        ));
    }
    Ok(layout)
}

/// The flat buffers of a leaf's layout, when they are ones whose lengths follow from the
/// array (see [`Flat`]).
fn flat(layout: &DataTypeLayout) -> Option<Flat> {
    let validity = layout.can_contain_null_mask;
    match (validity, &layout.buffers[..]) {
        (false, []) => Some(Flat::Nothing),
        (true, [BufferSpec::BitMap]) => Some(Flat::Bits),
        (true, [BufferSpec::FixedWidth { byte_width, .. }]) => {
            Some(Flat::Fixed(*byte_width as u64))
        }
        (true, [BufferSpec::FixedWidth { byte_width, .. }, BufferSpec::VariableWidth])
            if matches!(byte_width, 4 | 8) =>
        {
            Some(Flat::Offsets(*byte_width as u64))
        }
        _ => None,
    }
}

/// Add the buffers of `column`, of a flat type, to `found`.
///
/// # Safety
/// `column` is an unreleased array that [`Plan::check`] accepted for a node with `flat`.
unsafe fn column_buffers(
    column: &ArrowArray,
    flat: Flat,
    found: &mut Vec<(usize, u64)>,
) -> Result<(), String> {
    let slots = (column.offset + column.length) as u64;
    // SAFETY: `check` found the buffer list to hold the node's `n_buffers` pointers.
    let buffer = |index: usize| unsafe { *column.buffers.add(index) };
    let mut add = |pointer: *const c_void, bytes: u64| {
        if !pointer.is_null() && bytes > 0 {
            found.push((pointer as usize, bytes));
        }
    };
    if flat == Flat::Nothing {
        return Ok(());
    }
    if column.null_count != 0 {
        add(buffer(0), slots.div_ceil(8));
    }
    let values = match flat {
        Flat::Nothing => unreachable!("returned above"),
        Flat::Bits => slots.div_ceil(8),
        Flat::Fixed(width) => slots * width,
        // SAFETY: a column with offsets has three buffers (checked).
        Flat::Offsets(4) => return unsafe { variable_buffers::<i32>(column, &mut add) },
        // SAFETY: as above.
        Flat::Offsets(_) => return unsafe { variable_buffers::<i64>(column, &mut add) },
    };
    add(buffer(1), values);
    Ok(())
}

/// Add the offsets and values buffers of a string or binary `column` with offsets of
/// type `O`; fails when its offsets in use are negative or decreasing.
///
/// # Safety
/// As for [`column_buffers`], for a column with offsets of type `O`.
unsafe fn variable_buffers<O: Copy + Into<i64>>(
    column: &ArrowArray,
    add: &mut impl FnMut(*const c_void, u64),
) -> Result<(), String> {
    let slots = (column.offset + column.length) as usize;
    // SAFETY: three buffers, checked by `check`.
    let (offsets, values) = unsafe { (*column.buffers.add(1), *column.buffers.add(2)) };
    let width = size_of::<O>();
    add(offsets, ((slots + 1) * width) as u64);
    if column.length == 0 && column.offset == 0 {
        return Ok(()); // no values, whatever its one offset says
    }
    if offsets.is_null() {
        return Err("it has rows but no offsets buffer".into());
    }
    let offsets = offsets.cast::<O>();
    // SAFETY: an offsets buffer holds `offset + length + 1` offsets.
    let (first, last): (i64, i64) = unsafe {
        (
            (*offsets.add(column.offset as usize)).into(),
            (*offsets.add(slots)).into(),
        )
    };
    if first < 0 || last < first {
        return Err(format!(
            "its offsets run from {first} to {last}, where they must not be negative or decrease"
        ));
    }
    add(values, last as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Array, Int32Array, RecordBatch, StringArray, StructArray};
    use arrow_data::ffi::FFI_ArrowArray;
    use arrow_schema::{Field, Fields, IntervalUnit, TimeUnit, UnionFields};

    /// The buffers the C Data Interface gives an array of `data_type`, and whether more
    /// may follow: the specification's table, written out once to check the plan by.
    fn specified(data_type: &DataType) -> (i64, bool) {
        match data_type {
            DataType::Null | DataType::RunEndEncoded(..) => (0, false),
            DataType::Union(_, UnionMode::Sparse) => (1, false),
            DataType::Union(_, UnionMode::Dense) => (2, false),
            DataType::Dictionary(keys, _) => specified(keys),
            // Validity, views, then the variadic buffers and their sizes.
            DataType::Utf8View | DataType::BinaryView => (2, true),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => {
                (3, false)
            }
            DataType::ListView(_) | DataType::LargeListView(_) => (3, false),
            DataType::Struct(_) | DataType::FixedSizeList(..) => (1, false),
            _ => (2, false),
        }
    }

    fn every_type() -> Vec<DataType> {
        let item = Arc::new(Field::new("item", DataType::Int32, true));
        let entries = Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Int64, true),
        ]);
        let union_fields = UnionFields::try_new(
            [0, 1],
            [
                Field::new("i", DataType::Int32, true),
                Field::new("s", DataType::Utf8, true),
            ],
        )
        .unwrap();
        vec![
            DataType::Null,
            DataType::Boolean,
            DataType::Int8,
            DataType::UInt64,
            DataType::Float16,
            DataType::Float64,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Date32,
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Duration(TimeUnit::Second),
            DataType::Interval(IntervalUnit::MonthDayNano),
            DataType::Decimal128(38, 2),
            DataType::Decimal256(76, 3),
            DataType::FixedSizeBinary(5),
            DataType::Utf8,
            DataType::LargeBinary,
            DataType::Utf8View,
            DataType::BinaryView,
            DataType::List(item.clone()),
            DataType::LargeList(item.clone()),
            DataType::ListView(item.clone()),
            DataType::LargeListView(item.clone()),
            DataType::FixedSizeList(item.clone(), 3),
            DataType::Struct(entries.clone()),
            DataType::Map(
                Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                false,
            ),
            DataType::Union(union_fields.clone(), UnionMode::Sparse),
            DataType::Union(union_fields, UnionMode::Dense),
            DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8)),
            DataType::RunEndEncoded(
                Arc::new(Field::new("run_ends", DataType::Int32, false)),
                Arc::new(Field::new("values", DataType::Utf8, true)),
            ),
        ]
    }

    fn plan_of(data_type: &DataType) -> Plan {
        Plan::for_rows(&Schema::new(vec![Field::new("c", data_type.clone(), true)])).unwrap()
    }

    #[test]
    fn buffer_counts_are_the_specifications() {
        for data_type in every_type() {
            let plan = plan_of(&data_type);
            let column = plan.children(plan.root()).next().unwrap();
            assert_eq!(
                (column.buffers, column.variadic),
                specified(&data_type),
                "{data_type}"
            );
        }
    }

    #[test]
    fn arrow_rs_exports_pass_the_plan_and_flat_types_are_the_leaves() {
        for data_type in every_type() {
            let plan = plan_of(&data_type);
            let column = arrow_array::new_empty_array(&data_type);
            let rows = StructArray::new(
                Fields::from(vec![Field::new("c", data_type.clone(), true)]),
                vec![column],
                None,
            );
            let exported = FFI_ArrowArray::new(&rows.into_data());
            // SAFETY: an unreleased array exported by arrow-rs.
            let checked = unsafe { plan.check(ArrowArray::of_ffi(&exported)) };
            assert_eq!(checked, Ok(()), "{data_type}");
            let leaf = matches!(
                data_type,
                DataType::Null
                    | DataType::Boolean
                    | DataType::Utf8
                    | DataType::LargeBinary
                    | DataType::FixedSizeBinary(_)
            ) || data_type.is_primitive();
            assert_eq!(plan.flat_columns.is_some(), leaf, "{data_type}");
        }
    }

    #[test]
    fn a_negative_width_is_an_error_naming_the_type() {
        // A C schema may say "w:-1", which arrow-rs reads as a width of -1.
        let column = FFI_ArrowSchema::try_new("w:-1", vec![], None)
            .and_then(|column| column.with_name("w"))
            .unwrap();
        let rows = FFI_ArrowSchema::try_new("+s", vec![column], None).unwrap();
        let problem = Plan::new(&rows).unwrap_err();
        assert!(problem.contains("FixedSizeBinary(-1)"), "{problem}");
    }

    /// A struct array {a: int32, s: utf8} of 3 rows, exported by arrow-rs, and its plan.
    fn exported() -> (FFI_ArrowArray, Plan) {
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int32Array::from(vec![1, 2, 3])) as _),
            ("s", Arc::new(StringArray::from(vec!["x", "y", "z"])) as _),
        ])
        .unwrap();
        let plan = Plan::for_rows(&batch.schema()).unwrap();
        let array = FFI_ArrowArray::new(&StructArray::from(batch).into_data());
        (array, plan)
    }

    fn check(array: &FFI_ArrowArray, plan: &Plan) -> Result<(), String> {
        // SAFETY: an unreleased array exported by arrow-rs, changed only in its counts.
        unsafe { plan.check(ArrowArray::of_ffi(array)) }
    }

    fn child(array: &mut FFI_ArrowArray, index: usize) -> &mut ArrowArray {
        let root = ArrowArray::of_ffi(array);
        // SAFETY: arrow-rs's export has its children, which the test owns through `array`.
        unsafe { &mut **root.children.add(index) }
    }

    #[test]
    fn a_well_formed_batch_passes() {
        let (array, plan) = exported();
        assert_eq!(check(&array, &plan), Ok(()));
    }

    #[test]
    fn each_malformed_shape_is_named() {
        let (mut array, plan) = exported();
        child(&mut array, 0).length = 2;
        let problem = check(&array, &plan).unwrap_err();
        assert!(
            problem.contains("\"a\"") && problem.contains("2 rows"),
            "{problem}"
        );
        child(&mut array, 0).length = 3;

        child(&mut array, 1).n_buffers = 2;
        let problem = check(&array, &plan).unwrap_err();
        assert!(
            problem.contains("\"s\"") && problem.contains("2 buffers"),
            "{problem}"
        );
        child(&mut array, 1).n_buffers = 3;

        let other = Plan::for_rows(&Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let problem = check(&array, &other.unwrap()).unwrap_err();
        assert!(
            problem.contains("2 children") && problem.contains("has 1"),
            "{problem}"
        );

        child(&mut array, 0).offset = -1;
        let problem = check(&array, &plan).unwrap_err();
        assert!(problem.contains("offset -1"), "{problem}");
        child(&mut array, 0).offset = 0;
        assert_eq!(check(&array, &plan), Ok(()));
    }

    #[test]
    fn decreasing_string_offsets_are_refused_before_anything_reads_them() {
        let (mut array, plan) = exported();
        let decreasing: [i32; 4] = [0, 1, 2, -1];
        let column = child(&mut array, 1);
        // SAFETY: the column's list of three buffer pointers, which arrow-rs made mutable;
        // its release frees its own buffers whatever the list points to.
        unsafe { *column.buffers.add(1) = decreasing.as_ptr().cast() };
        // SAFETY: the tree is unchanged but for its offsets, valid for three rows.
        let problem = unsafe { plan.flat_buffers(ArrowArray::of_ffi(&array)) }.unwrap_err();
        assert!(
            problem.contains("\"s\"") && problem.contains("from 0 to -1"),
            "{problem}"
        );
    }
}
